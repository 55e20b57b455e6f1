"""The long studies run outside CI; here each script runs a tiny smoke, and committed reports are checked
to be what the script makes of the committed raw results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "finetune_study.py"


def test_finetune_study_smoke_writes_points_tables_and_plot(data_dir, tmp_path):
    run = subprocess.run([sys.executable, str(STUDY), "--part", "usps", "--models", "cnn-mnist", "--sizes", "10", "--seeds", "1",
                          "--recipe", "smoke", "--set", "epochs=1", "--data-dir", str(data_dir), "--results", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "finetune_study.jsonl").read_text().splitlines()]
    starts = sorted((r["init"], r["freeze"]) for r in rows)
    assert starts == [("finetuned", "backbone"), ("finetuned", "none"), ("scratch", "none"),
                      ("zero-shot (mnist_frame)", "-"), ("zero-shot (resize)", "-")], starts
    trained = [r for r in rows if not r["init"].startswith("zero-shot")]
    assert all(r["epochs_run"] == 1 and r["recipe"] == "smoke" and len(r["test_accuracy_per_class"]) == 10 for r in trained)
    zero = {r["init"]: r["test_accuracy"] for r in rows if r["init"].startswith("zero-shot")}
    assert zero["zero-shot (mnist_frame)"] > 0.9, zero  # the pretrained MNIST model reads USPS framed like MNIST
    assert (tmp_path / "finetune_study.png").stat().st_size > 10_000
    assert "## Study" in (tmp_path / "finetune_study.md").read_text()


def test_committed_finetune_report_is_what_the_script_makes_of_the_committed_log(tmp_path):
    log = ROOT / "benchmarks" / "results" / "finetune_study.jsonl"
    (tmp_path / "finetune_study.jsonl").write_bytes(log.read_bytes())
    run = subprocess.run([sys.executable, str(STUDY), "--report", "--results", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("finetune_study.md", "finetune_study.json"):
        assert (tmp_path / name).read_text() == (log.parent / name).read_text(), f"{name} is stale: run the script with --report"


@pytest.mark.slow
def test_train_time_smoke_runs_zoo_train_in_both_backends(data_dir, tmp_path):
    """benchmarks/train_time.py on 640 training images (the full run is committed in benchmarks/results)."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_time.py"), "--max-train-examples", "640",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "ZOO_DATA_DIR": str(data_dir)})
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((tmp_path / "train_time.json").read_text())["rows"]
    assert [r["backend"] for r in rows] == ["torch", "jax"]
    for r in rows:
        assert r["epochs"] == json.loads((ROOT / "zoo" / "recipes" / "cnn-mnist-fast.json").read_text())["epochs"]
        assert 0 < r["train_s"] < r["command_s"]
        assert 0.5 < r["test_accuracy"] < 0.99 and r["reached_target"] is False  # 640 images: learning, not yet 99 %


def test_data_parallel_smoke_writes_rows_estimate_and_chart(tmp_path):
    """benchmarks/data_parallel.py on 1 step of batch 8, torch only (1 process, then 2 ranks under torchrun): the
    rows, the all-reduce volume, the 8-GPU estimate and the chart. The JAX settings run the same loop in the full run."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_parallel.py"), "--models", "cnn-mnist", "--backends",
                          "torch", "--batch", "8", "--steps", "1", "--warmup", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    payload = json.loads((tmp_path / "data_parallel.json").read_text())
    one, two = payload["rows"]
    assert (one["ranks"], two["ranks"]) == (1, 2) and (one["per_rank_batch"], two["per_rank_batch"]) == (8, 4)
    assert one["comm_ms"] == 0 and one["step_ms"] == one["compute_ms"] > 0 and two["step_ms"] > 0 and two["comm_ms"] >= 0
    assert two["all_reduce_bytes"] == 4 * two["parameters"] == 4 * 582026  # cnn-mnist's float32 gradients
    assert [e["model"] for e in payload["estimate_8_gpus"]] == ["cnn-mnist"]
    assert payload["estimate_8_gpus"][0]["all_reduce_MB"] == 2.33
    md = (tmp_path / "data_parallel.md").read_text()
    assert "| cnn-mnist | torch | 2 | 4 |" in md and "ESTIMATE" in md and "loaded by other jobs" in md
    assert (tmp_path / "data_parallel.png").stat().st_size > 1000
