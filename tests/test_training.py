"""The training library: same data order + same weights => same loss trajectory in both frameworks;
runs write metrics, a plot and checkpoints; a run killed with SIGKILL resumes to identical weights."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

import zoo
from zoo.backends import get_backend
from zoo.data.pipeline import batches, load_datasets
from zoo.optim import OptimizerConfig
from zoo.registry import get_spec


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_training_trajectories_agree_across_frameworks(data_dir, tmp_path, optimizer):
    """Keras-style trajectory check: same init, same batches, 30 steps; per-step losses agree."""
    spec = get_spec("mlp-mnist")
    data = load_datasets(spec, data_dir)["val"]
    zoo.save(zoo.load("mlp-mnist", backend="torch", pretrained=False), tmp_path / "init.safetensors")
    cfg = OptimizerConfig(name=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3, weight_decay=1e-4)
    losses = {}
    for backend in ("torch", "jax"):
        b = get_backend(backend)
        trainer = b.trainer(zoo.load(str(tmp_path / "init.safetensors"), backend=backend), cfg)
        losses[backend] = [trainer.step(x, y) for _, (x, y) in zip(range(30), batches(data, spec, 64, seed=1), strict=False)]
    assert losses["torch"][-1] < losses["torch"][0] * 0.7, "the model should learn"
    np.testing.assert_allclose(losses["jax"], losses["torch"], atol=1e-3, rtol=0)


def run_train(out, backend, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-m", "zoo.cli", "train", "mlp-mnist", "--backend", backend, "--out", str(out), "--epochs", "2",
            "--max-train-examples", "6400", "--batch-size", "64", "--checkpoint-every", "20", "--no-progress",
            "--optimizer", "adamw", "--schedule", "cosine", *extra], env


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(data_dir, tmp_path, backend):
    cmd, env = run_train(tmp_path / "straight", backend, "--data-dir", str(data_dir))
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = run_train(tmp_path / "killed", backend, "--data-dir", str(data_dir))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "train_state.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for a mid-epoch checkpoint of the second epoch
        if state.exists():
            try:
                from safetensors import safe_open

                with safe_open(str(state), framework="numpy") as f:
                    meta = json.loads(f.metadata()["state"])
                if meta["epoch"] == 1 and meta["step_in_epoch"] >= 40:
                    break
            except Exception:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final.safetensors").exists(), "the run finished before it was killed"
    cmd, env = run_train(tmp_path / "killed", backend, "--data-dir", str(data_dir), "--resume")
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    assert "resuming mlp-mnist" in out
    a = load_file(str(tmp_path / "straight" / "final.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final.safetensors"))
    assert all(a[k].tobytes() == b[k].tobytes() for k in a), "resumed weights differ from the uninterrupted run"
    history = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]


def test_a_run_writes_metrics_plot_checkpoints_and_summary(data_dir, tmp_path):
    from zoo.train import TrainConfig, fit

    cfg = TrainConfig(model="mlp-mnist", backend="torch", epochs=2, batch_size=128, max_train_examples=2000,
                      optimizer=OptimizerConfig(name="adamw", lr=2e-3))
    summary = fit(cfg, tmp_path, data_dir=data_dir, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and lines[1]["val_accuracy"] > 0.8
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = zoo.load(str(tmp_path / "epoch-2.safetensors"), backend="jax")  # trained in torch, loads in jax
    assert model.zoo_spec.name == "mlp-mnist"
    assert summary["test_accuracy"] > 0.8 and summary["train_wall_time_s"] > 0


SHIP_AND_RECORD = """
import json, shutil, sys
from pathlib import Path
import zoo.registry as registry
from zoo.cli import main
work = Path(sys.argv[1])
shutil.copy(registry.REGISTRY_PATH, work / "registry.json")
(work / "weights").mkdir()
shutil.copy(registry.WEIGHTS_DIR / "imdb-wordlevel-10k.json", work / "weights")
registry.REGISTRY_PATH, registry.WEIGHTS_DIR = work / "registry.json", work / "weights"  # a scratch registry
assert main(["ship", "mlp-mnist", "--weights", sys.argv[2], "--tag", "scratch", "--recipe", "zoo train mlp-mnist ..."]) == 0
for backend in ("torch", "jax"):
    assert main(["eval", "mlp-mnist", "--backend", backend, "--record", "--data-dir", sys.argv[3]]) == 0
print(json.dumps(registry.model_info("mlp-mnist")))
"""


@pytest.mark.slow
def test_ship_then_eval_record_writes_measured_metrics_into_the_registry(data_dir, tmp_path):
    from zoo.train import TrainConfig, fit

    summary = fit(TrainConfig(model="mlp-mnist", backend="jax", epochs=1, batch_size=128, max_train_examples=3000,
                              optimizer=OptimizerConfig(name="adamw", lr=2e-3)), tmp_path / "run", data_dir=data_dir, progress=False)
    out = subprocess.run([sys.executable, "-c", SHIP_AND_RECORD, str(tmp_path), summary["weights"], str(data_dir)],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out.strip().splitlines()[-1])
    entry = info["weights"]["scratch"]
    assert info["default_tag"] == "scratch" and entry["trained_in"] == "jax"
    assert entry["sha256"] == zoo.checkpoint.sha256_file(summary["weights"])
    measured = {b: entry["metrics"][b]["test_accuracy"] for b in ("torch", "jax")}
    assert abs(measured["jax"] - summary["test_accuracy"]) < 1e-6  # eval reproduces the trainer's own measurement
    assert abs(measured["torch"] - measured["jax"]) <= 0.0005


def test_deterministic_switch_sets_each_frameworks_own_flag(monkeypatch):
    """Catches: `deterministic=True` ignored (a GPU run would then not resume exactly)."""
    import torch

    from zoo.train import make_deterministic

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    try:
        make_deterministic("torch")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    make_deterministic("jax")
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1 --xla_gpu_deterministic_ops=true"
    make_deterministic("jax")  # once is enough
    assert os.environ["XLA_FLAGS"].count("deterministic") == 1


@pytest.mark.slow
def test_preprocessing_overrides_shape_the_data_and_travel_with_the_checkpoint(data_subset, tmp_path):
    """A new tag may change `max_len`: the run's data is cut to it and every checkpoint records it. Catches the
    override reaching the checkpoint but not the tokenised data (or the reverse)."""
    from zoo.checkpoint import read_checkpoint
    from zoo.train import TrainConfig, fit, prepare_model_and_data

    data_dir = data_subset({"imdb": {"train": 400, "test": 400}})  # tokenising all 50,000 reviews three times took a minute
    cfg = TrainConfig(model="gru-imdb", backend="torch", epochs=1, batch_size=8, max_train_examples=16,
                      preprocessing_overrides={"max_len": 96})
    model, data = prepare_model_and_data(cfg, "torch", data_dir)
    assert model.zoo_spec.preprocessing["max_len"] == 96
    assert max(len(s) for s in data["train"].inputs) == 96 and max(len(s) for s in data["val"].inputs) == 96
    assert all(x.shape[1] <= 96 for x, _ in batches(data["train"], model.zoo_spec, 8))
    fit(cfg, tmp_path, data_dir=data_dir, progress=False)
    with pytest.raises(ValueError, match="head_tokens=64 must lie in 0..max_len=40"):
        prepare_model_and_data(TrainConfig(model="gru-imdb", preprocessing_overrides={"max_len": 40}), "torch", data_dir)
    assert read_checkpoint(tmp_path / "final.safetensors").preprocessing["max_len"] == 96
