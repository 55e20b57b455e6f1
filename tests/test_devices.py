"""Devices and backend objects: models load onto a device, the pipeline and training follow them there,
training state resumes on another device, and wrapped models (torch.compile, DDP) save with plain names.

JAX sees several devices only when told before it starts (`--xla_force_host_platform_device_count`), so the
multi-device checks run in a subprocess with two CPU devices; a GPU, where present, is covered the same way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import zoo
from zoo.backends import backend_for, get_backend, unwrap
from zoo.checkpoint import read_checkpoint
from zoo.testing import example_batch

TORCH_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_torch_model_loads_on_its_device_and_the_pipeline_follows_it(device):
    model = zoo.load("cnn-mnist", backend="torch", device=device)
    assert {p.device.type for p in model.parameters()} == {device}
    b = backend_for(model)
    assert (b.NAME, b.device.type, b.spec.name) == ("torch", device, "cnn-mnist")
    pixels = np.random.default_rng(3).integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    got = zoo.pipeline(model)(pixels)  # inputs built on the host go to the model's device; results come back as NumPy
    want = zoo.pipeline(zoo.load("cnn-mnist", backend="torch"))(pixels)  # on the CPU
    assert isinstance(got.logits, np.ndarray) and got.labels == want.labels
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-4, rtol=1e-4)


def test_bad_devices_are_clear_errors():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda'.*no CUDA device"):
            zoo.load("mlp-mnist", backend="torch", device="cuda")
    with pytest.raises(ValueError, match="'cpu:7'.*only 1 cpu device"):
        zoo.load("mlp-mnist", backend="jax", device="cpu:7")
    with pytest.raises(RuntimeError, match="Expected one of"):
        get_backend("torch", device="abacus")
    with pytest.raises(ValueError, match="cannot run on the 'jax' backend"):
        zoo.api.Pipeline(zoo.load("mlp-mnist", backend="torch"), backend="jax")


def test_wrapped_torch_models_save_plain_names_and_run_in_the_pipeline(tmp_path):
    """torch.compile and DDP hide `zoo_spec` and prefix every state-dict key; the file must not notice."""
    import torch.distributed as dist

    model = zoo.load("resnet-mnist", backend="torch")
    zoo.save(model, tmp_path / "plain.safetensors")
    plain = read_checkpoint(tmp_path / "plain.safetensors").tensors
    compiled = torch.compile(model, backend="eager")  # the wrapper, without a C++ toolchain
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    zoo.save(compiled, tmp_path / "compiled.safetensors")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        assert not hasattr(ddp, "zoo_spec") and unwrap(ddp) is model
        zoo.save(ddp, tmp_path / "ddp.safetensors")
        x, _ = example_batch(model.zoo_spec, 4, seed=1)
        np.testing.assert_array_equal(backend_for(ddp).logits(ddp, x), get_backend("torch").logits(model, x))
    finally:
        dist.destroy_process_group()
    for name in ("compiled", "ddp"):
        tensors = read_checkpoint(tmp_path / f"{name}.safetensors").tensors
        assert tensors.keys() == plain.keys() and all(np.array_equal(tensors[k], plain[k]) for k in plain), name


JAX_TWO_DEVICES = textwrap.dedent("""
    import json, os, sys, tempfile
    import jax
    import numpy as np
    import zoo
    from zoo.backends import backend_for, get_backend
    from zoo.optim import OptimizerConfig
    from zoo.testing import example_batch
    from zoo.train import load_training_state, save_training_state, TrainConfig

    first, second = jax.devices("cpu")[:2]
    model = zoo.load("resnet-mnist", backend="jax", device="cpu:1")
    b = backend_for(model)
    on = {d for leaf in jax.tree_util.tree_leaves(__import__("flax").nnx.state(model)) for d in leaf.devices()}
    x, y = example_batch(model.zoo_spec, 16, seed=2)
    reference = zoo.load("resnet-mnist", backend="jax", device="cpu:0")
    same_logits = float(np.abs(b.logits(model, x) - backend_for(reference).logits(reference, x)).max())

    cfg = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=1e-2)
    def run(steps, device, start=None):
        m = zoo.load("resnet-mnist", backend="jax", device=device, dropout=0.0)
        backend = get_backend("jax", spec=m.zoo_spec, device=device)
        trainer = backend.trainer(m, cfg)
        if start is not None:
            backend.restore_trainer_state(trainer, *start, "state")
        for step in range(steps):
            xs, ys = example_batch(m.zoo_spec, 16, seed=10 + trainer.steps_done)
            trainer.step(xs, ys)
        return backend, trainer

    _, whole = run(4, "cpu:0")
    b0, half = run(2, "cpu:0")
    tensors, meta = b0.trainer_state(half)
    b1, resumed = run(2, "cpu:1", start=(tensors, meta))
    moved = {d for leaf in jax.tree_util.tree_leaves(__import__("flax").nnx.state(resumed.optimizer)) for d in leaf.devices()}
    a, c = get_backend("jax").state_to_numpy(whole.model), b1.state_to_numpy(resumed.model)
    print(json.dumps({"devices": sorted(str(d) for d in on), "backend_device": str(b.device), "same_logits": same_logits,
                      "optimizer_devices": sorted(str(d) for d in moved),
                      "resume_max_diff": max(float(np.abs(a[k] - c[k]).max()) for k in a)}))
""")


def test_jax_model_on_a_second_device_runs_there_and_training_resumes_across_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", JAX_TWO_DEVICES], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["devices"] == [got["backend_device"]] and got["backend_device"].endswith("1"), got
    assert got["same_logits"] <= 1e-5, got
    assert got["optimizer_devices"] == got["devices"], "the resumed optimizer state must live on the new device"
    assert got["resume_max_diff"] == 0.0, "2 steps on cpu:0 + 2 resumed on cpu:1 must equal 4 uninterrupted steps"


def test_zoo_train_takes_a_device_and_records_it(data_dir, tmp_path):
    """`zoo train --device`: the run trains there and its config records it (moving devices on resume is the
    JAX two-device check above)."""
    from zoo.cli import main

    out = tmp_path / "run"
    args = ["train", "mlp-mnist", "--backend", "torch", "--device", "cpu", "--epochs", "1", "--max-train-examples", "256",
            "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    model = zoo.load(str(out / "final.safetensors"), backend="jax")
    assert backend_for(model).NAME == "jax"
