"""Shared benchmark plumbing: median timing and JSON + Markdown output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def checkout_env() -> dict:
    """The environment for a child process that imports this checkout's zoo (not an installed copy)."""
    import os

    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def run_child(code: str, args: dict, launcher: tuple[str, ...] = (), env: dict | None = None) -> list[dict]:
    """Run `code` in a fresh interpreter that imports this checkout's zoo (after `launcher`, e.g. torchrun's
    arguments ending in --no-python, with `env` added); its JSON lines, parsed."""
    import subprocess
    import sys

    command = [*launcher, sys.executable, "-c", code, json.dumps(args)]
    out = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env={**checkout_env(), **(env or {})},
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def machine() -> dict:
    import os

    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows])


def write_results(name: str, rows: list[dict], columns: list[str], out_dir: str | Path = "benchmarks/results",
                  versions: str = "") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "versions": versions, "rows": rows}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown_table(rows, columns)
    (out / f"{name}.md").write_text(f"# {name}\n\n{payload['machine']} {versions}\n\n{table}\n")
    print(table)
    return out / f"{name}.json"
