"""Wall time of whole `zoo train` runs to a test accuracy, in both backends, back to back on this machine.

    python benchmarks/train_time.py [--config cnn-mnist-fast] [--backends torch jax] [--target 0.99] [--out benchmarks/results]
        [--max-train-examples N]   # a smoke run

Each run is `zoo train MODEL --config CONFIG --backend B` in a fresh process (JAX compilation included, with
an empty compilation cache). Reported per backend: training time (`train_wall_time_s`: the epochs, their
validation passes and checkpoints), the whole command's wall time, the kept epoch's test accuracy, and whether
it reached the target. Writes OUT/train_time.{json,md}."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import checkout_env, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="cnn-mnist-fast")
    parser.add_argument("--backends", nargs="+", default=["torch", "jax"])
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--max-train-examples", type=int)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    recipe = json.loads((ROOT / "zoo" / "recipes" / f"{args.config}.json").read_text())
    rows = []
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**checkout_env(), "JAX_COMPILATION_CACHE_DIR": str(Path(tmp) / "jax-cache")}
            cmd = [sys.executable, "-m", "zoo.cli", "train", recipe["model"], "--config", args.config, "--backend", backend,
                   "--out", str(Path(tmp) / "run"), "--no-progress"]
            if args.max_train_examples:
                cmd += ["--max-train-examples", str(args.max_train_examples)]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - start
            summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
        row = {"model": recipe["model"], "config": args.config, "backend": backend, "epochs": summary["epochs_run"],
               "batch_size": recipe["batch_size"], "train_s": summary["train_wall_time_s"], "command_s": round(wall, 1),
               "test_accuracy": round(summary["test_accuracy"], 4), "reached_target": summary["test_accuracy"] >= args.target,
               "framework": summary["framework"]}
        rows.append(row)
        print(row, flush=True)
    write_results("train_time", rows, ["model", "config", "backend", "epochs", "batch_size", "train_s", "command_s",
                                       "test_accuracy", "reached_target", "framework"], args.out)


if __name__ == "__main__":
    main()
