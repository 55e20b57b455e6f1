"""Data-parallel training: N ranks (torchrun + DDP, JAX devices and processes) and gradient accumulation give
the result of one process with the same global batch. The data-side checks are fast; the runs are slow tier."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zoo.backends import backend_for
from zoo.checkpoint import read_checkpoint
from zoo.data.pipeline import ArraySet, batches, steps_per_epoch
from zoo.registry import get_spec


def synthetic(kind: str, n: int, seed: int = 0) -> ArraySet:
    """Random MNIST-shaped images, or token sequences of 1..256 tokens (IMDb-like lengths)."""
    rng = np.random.default_rng(seed)
    if kind == "image":
        return ArraySet(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n))
    seqs = np.empty(n, dtype=object)
    seqs[:] = [rng.integers(2, 100, rng.integers(1, 257)).astype(np.int32) for _ in range(n)]
    return ArraySet(seqs, rng.integers(0, 2, n))


@pytest.mark.parametrize("model, kind", [("cnn-mnist", "image"), ("lstm-imdb", "text")])
def test_ranks_take_equal_slices_and_together_make_the_single_process_batch(model, kind):
    """Catches: unequal slices of a last batch (DDP would average them unweighted), text padded per rank
    (ranks with different shapes), or ranks drawing different permutations or augmentations."""
    spec, data = get_spec(model), synthetic(kind, 203)  # 203 = 3 x 64 + 11: a last batch of 11, odd
    extra = {"augment": True} if kind == "image" else {}
    one = list(batches(data, spec, 64, seed=4, epoch=1, divisible_by=2, **extra))
    ranks = [list(batches(data, spec, 64, seed=4, epoch=1, rank=r, world_size=2, **extra)) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == steps_per_epoch(203, 64, 2) == 4
    for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks, strict=True):
        assert x0.shape == x1.shape and len(y0) == len(y1), "every rank gets an equal slice of the same shape"
        np.testing.assert_array_equal(np.concatenate([x0, x1]), x)
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
    assert len(one[-1][1]) == 10, "the last batch of 11 loses one example, deterministically"


def test_a_cut_last_batch_keeps_every_other_example_and_its_augmentation():
    """Catches: the cut changing which examples come first, or the augmentation of those kept."""
    spec, data = get_spec("cnn-mnist"), synthetic("image", 203)
    plain = list(batches(data, spec, 64, seed=1, augment=True))
    cut = list(batches(data, spec, 64, seed=1, augment=True, divisible_by=4))
    assert len(plain[-1][1]) == 11 and len(cut[-1][1]) == 8
    np.testing.assert_array_equal(cut[-1][0], plain[-1][0][:8])
    assert steps_per_epoch(3, 64, divisible_by=4) == 0 and list(batches(synthetic("image", 3), spec, 64, divisible_by=4)) == []


def test_text_ranks_are_padded_to_the_global_batch_width():
    """Catches: each rank padding to its own longest sequence (different shapes across ranks, different
    compiled programs, and a global batch that differs from the single-process one)."""
    spec, data = get_spec("lstm-imdb"), synthetic("text", 128, seed=2)
    widths = {r: [x.shape[1] for x, _ in batches(data, spec, 64, rank=r, world_size=4)] for r in range(4)}
    single = [x.shape[1] for x, _ in batches(data, spec, 64)]
    assert all(w == single for w in widths.values()), (widths, single)


# --- the runs (slow tier): small copies of the datasets, so that 20 steps of 64 are one epoch and the
# validation and test passes after it take seconds

STEPS, BATCH = 20, 64
ADAMW = {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01, "schedule": "cosine", "warmup_steps": 5}
# resnet: its recipe's SGD. Adam's step is about lr x sign(gradient) for a parameter whose gradient is near 0, so
# it turns float32 rounding differences (any change of summation order) into full steps.
OPTIMIZER = {"resnet-mnist": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                              "schedule": "cosine", "warmup_steps": 5}}
NO_DROPOUT = {"cnn-mnist": {}, "resnet-mnist": {"dropout": 0.0}, "lstm-imdb": {"dropout": 0.0}}
# reviews cut to 96 tokens: the shortest still leave padding in a few batches, at 3/8 of the cost of 256 (each
# width is one more JAX compilation in each process); each rank's padding to the global width is tested above
PREPROCESSING = {"lstm-imdb": {"max_len": 96}}


@pytest.fixture(scope="module")
def small_data(data_subset) -> Path:
    """1500 training and 200 test examples of MNIST and IMDb."""
    return data_subset({name: {"train": 1500, "test": 200} for name in ("mnist", "imdb")})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(model: str, backend: str, out: Path, data: Path, tmp_path: Path, *extra: str, epochs: int = 1) -> list[str]:
    """`zoo train` for `epochs` epochs of STEPS x BATCH, no dropout, warm-up and cosine decay."""
    config = tmp_path / f"{model}.json"
    config.write_text(json.dumps({"model_overrides": NO_DROPOUT[model], "optimizer": OPTIMIZER.get(model, ADAMW),
                                  "preprocessing_overrides": PREPROCESSING.get(model, {})}))
    return ["-m", "zoo.cli", "train", model, "--backend", backend, "--config", str(config), "--data-dir", str(data),
            "--out", str(out), "--epochs", str(epochs), "--batch-size", str(BATCH), "--max-train-examples", str(STEPS * BATCH),
            "--no-augment", "--no-progress", *extra]


def run(args: list[str], env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master-addr=127.0.0.1",
            f"--master-port={free_port()}", *args]


def relative_difference(a: Path, b: Path) -> dict[str, float]:
    """‖Δ‖/‖θ‖ for every tensor of two checkpoints (parameters and BatchNorm running statistics)."""
    x, y = read_checkpoint(a).tensors, read_checkpoint(b).tensors
    assert x.keys() == y.keys()
    return {k: float(np.linalg.norm((x[k] - y[k]).astype(np.float64)) / max(np.linalg.norm(x[k].astype(np.float64)), 1e-12))
            for k in x}


def worst(diffs: dict[str, float]) -> tuple[str, float]:
    key = max(diffs, key=diffs.get)
    return key, diffs[key]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn-mnist", "lstm-imdb"])
def test_torchrun_two_ranks_match_one_process(small_data, tmp_path, model):
    """Catches: DDP summing instead of averaging gradients, ranks taking overlapping or unequal slices, a per-rank
    batch of batch_size (a global batch twice as large), text padded per rank, or rank 1 writing over rank 0's
    checkpoint. (resnet-mnist: see the float64 check below.)"""
    run([sys.executable, *train_command(model, "torch", tmp_path / "one", small_data, tmp_path)])
    two = run(torchrun(2, *train_command(model, "torch", tmp_path / "two", small_data, tmp_path, "--distributed")))
    assert "in 2 slices (2 process(es))" in two.stdout
    diffs = relative_difference(tmp_path / "one" / "epoch-1.safetensors", tmp_path / "two" / "epoch-1.safetensors")
    print(model, "torch 2 ranks vs 1:", worst(diffs), sorted(diffs.items(), key=lambda kv: -kv[1])[:5])
    assert worst(diffs)[1] <= 1e-5, worst(diffs)
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [STEPS], "one metrics line, written by rank 0 alone"
    if model == "cnn-mnist":  # the two-rank checkpoint is an ordinary one: it loads in JAX with the usual parity
        assert logits_gap_between_backends(tmp_path / "two" / "final.safetensors") <= 1e-4


def logits_gap_between_backends(path: Path) -> float:
    """The largest |torch - JAX| logit of a checkpoint loaded in both backends (8 examples)."""
    import zoo
    from zoo.testing import example_batch

    torch_model, jax_model = zoo.load(str(path), backend="torch"), zoo.load(str(path), backend="jax")
    x, _ = example_batch(torch_model.zoo_spec, 8, seed=3)
    gap = float(np.abs(backend_for(torch_model).logits(torch_model, x) - backend_for(jax_model).logits(jax_model, x)).max())
    print(path.parent.name, "torch vs JAX logits:", gap)
    return gap


RESNET_FLOAT64 = """
import itertools, os, sys
import numpy as np, torch
import zoo
from zoo.backends import get_backend, start_data_parallel
from zoo.data.pipeline import batches, load_datasets
from zoo.optim import OptimizerConfig
torch.set_default_dtype(torch.float64)
parallel = start_data_parallel("torch") if "WORLD_SIZE" in os.environ else {}
model = zoo.load("resnet-mnist", backend="torch", pretrained=False, dropout=0.0)
b = get_backend("torch", spec=model.zoo_spec, **parallel)
data = load_datasets(model.zoo_spec, sys.argv[1])["train"]
trainer = b.trainer(model, OptimizerConfig(**{**%r, "total_steps": %d}), grad_accum=int(sys.argv[3]))
for x, y in itertools.islice(batches(data, model.zoo_spec, %d, seed=0, rank=b.rank, world_size=b.world_size), %d):
    trainer.step(x.astype(np.float64), y)
if b.rank == 0:
    np.savez(sys.argv[2], **b.state_to_numpy(model))
"""


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process_with_global_batchnorm(small_data, tmp_path):
    """resnet-mnist, in float64: in float32 a ReLU input within rounding of 0 (MNIST's uniform background makes
    many) takes the other side of the kink whenever a sum is reordered, and 20 steps amplify that to ~3e-2
    (measured), which would hide any bug. Catches: BatchNorm statistics of the rank's half batch (not global),
    a global BatchNorm without the gradient through its all-reduce, wrong running statistics (compared too)."""
    script = RESNET_FLOAT64 % (OPTIMIZER["resnet-mnist"], STEPS, BATCH, STEPS)
    run([sys.executable, "-c", script, str(small_data), str(tmp_path / "one.npz"), "1"])
    run(torchrun(2, "--no-python", sys.executable, "-c", script, str(small_data), str(tmp_path / "two.npz"), "1"))
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    diffs = {k: float(np.linalg.norm(one[k] - two[k]) / max(np.linalg.norm(one[k]), 1e-12)) for k in one.files}
    print("resnet-mnist float64, torch 2 ranks vs 1:", worst(diffs))
    assert any("running_var" in k for k in diffs) and worst(diffs)[1] <= 1e-5, worst(diffs)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_gradient_accumulation_matches_the_large_batch(small_data, tmp_path, backend):
    """2 micro-batches of 32 per step vs one batch of 64. Catches: micro-batch losses summed instead of averaged
    (gradients twice as large), an optimizer step (or a learning-rate step) per micro-batch, or a micro-batch
    seen twice."""
    run([sys.executable, *train_command("cnn-mnist", backend, tmp_path / "one", small_data, tmp_path)])
    run([sys.executable, *train_command("cnn-mnist", backend, tmp_path / "accum", small_data, tmp_path, "--grad-accum", "2")])
    diffs = relative_difference(tmp_path / "one" / "epoch-1.safetensors", tmp_path / "accum" / "epoch-1.safetensors")
    print(f"cnn-mnist {backend}, 2 x 32 vs 64:", worst(diffs))
    assert worst(diffs)[1] <= 1e-5, worst(diffs)
    steps = json.loads((tmp_path / "accum" / "metrics.jsonl").read_text().splitlines()[0])["step"]
    assert steps == STEPS, "one optimizer step per 2 micro-batches"


@pytest.mark.slow
def test_torchrun_two_ranks_with_gradient_accumulation_match_one_process(small_data, tmp_path):
    """2 ranks x 2 micro-batches of 16 vs one process with batches of 64. Catches: DDP all-reducing after every
    micro-batch while the ranks weight them as a whole batch (no `no_sync`: a right sum, but only by luck of the
    order), micro-batches cut before the rank's slice (ranks overlapping), or the last batch cut to a multiple of
    the ranks alone (not ranks x micro-batches: a micro-batch of unequal size)."""
    run([sys.executable, *train_command("cnn-mnist", "torch", tmp_path / "one", small_data, tmp_path)])
    two = run(torchrun(2, *train_command("cnn-mnist", "torch", tmp_path / "two", small_data, tmp_path, "--distributed",
                                         "--grad-accum", "2")))
    assert "in 2 slices (2 process(es)) x 2 micro-batch(es)" in two.stdout
    diffs = relative_difference(tmp_path / "one" / "epoch-1.safetensors", tmp_path / "two" / "epoch-1.safetensors")
    print("cnn-mnist torch, 2 ranks x 2 x 16 vs 64:", worst(diffs))
    assert worst(diffs)[1] <= 1e-5, worst(diffs)


JAX_CPU = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn-mnist", "lstm-imdb"])
def test_jax_two_devices_and_two_processes_match_one_device(small_data, tmp_path, model):
    """One process over 2 CPU devices (the batch sharded on the mesh's 'data' axis), and 2 processes joined by
    jax.distributed (each feeding its own half), vs one device. Catches: parameters not replicated (or the batch
    not split), a process feeding the whole global batch as its slice, the loss averaged per device and then
    summed, or process 1 writing files."""
    run([sys.executable, *train_command(model, "jax", tmp_path / "one", small_data, tmp_path)], env=JAX_CPU)
    two_devices = {**JAX_CPU, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = run([sys.executable, *train_command(model, "jax", tmp_path / "devices", small_data, tmp_path, "--distributed")],
              env=two_devices)
    assert "in 2 slices (1 process(es))" in out.stdout
    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, *train_command(model, "jax", tmp_path / "processes", small_data, tmp_path,
                                                              "--distributed", "--coordinator-address", address,
                                                              "--num-processes", "2", "--process-id", str(i))],
                              env={**os.environ, **JAX_CPU, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outputs]
    assert "in 2 slices (2 process(es))" in outputs[0][0] and "data-parallel" not in outputs[1][0]
    for run_dir in ("devices", "processes"):
        diffs = relative_difference(tmp_path / "one" / "epoch-1.safetensors", tmp_path / run_dir / "epoch-1.safetensors")
        print(model, f"jax {run_dir} vs 1 device:", worst(diffs))
        assert worst(diffs)[1] <= 1e-5, (run_dir, worst(diffs))
    # the reverse of the torch check above: what 2 JAX processes wrote loads in torch with the usual parity
    assert logits_gap_between_backends(tmp_path / "processes" / "final.safetensors") <= 1e-4


# --- a rank killed mid-run (SIGKILL: no handler runs, no goodbye to the others), then --resume (slow tier).
# 3 epochs of 20 steps, the training state written every 5; the kill comes just after the first one is written.

KILL_EPOCHS, CHECKPOINT_EVERY, FAIL_WITHIN_S = 3, 5, 60


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Poll (every 10 ms: a step takes tens) until `path` exists; the run must still be going."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended ({proc.returncode}) before {path.name} was written"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.01)


def torchrun_worker(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker process for `rank` (its RANK variable)."""
    import psutil

    workers = [p for p in psutil.Process(launcher.pid).children(recursive=True) if p.environ().get("RANK") == str(rank)]
    assert len(workers) == 1, workers
    return workers[0].pid


def seconds_until_exit(proc: subprocess.Popen, limit: float = FAIL_WITHIN_S + 240) -> tuple[float, str]:
    """How long `proc` takes to end from now (at most `limit`: a hang fails the test), and its stdout + stderr."""
    import time

    began = time.monotonic()
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"still running {limit} s after the kill: the run hangs") from None
    return time.monotonic() - began, out + err


def resumed_at(output: str) -> tuple[int, int]:
    """(epoch, step) of `fit`'s 'resuming ... at epoch E, step S' line."""
    found = re.search(r"resuming .* at epoch (\d+), step (\d+)", output)
    assert found, output[-3000:]
    return int(found[1]), int(found[2])


@pytest.mark.slow
def test_torchrun_a_killed_rank_fails_the_run_and_resume_finishes_it(small_data, tmp_path):
    """SIGKILL of rank 1 right after the first training state is written. Catches: rank 0 hanging forever in
    DDP's all-reduce (gloo's own timeout is 30 min) or a launcher that restarts the group silently; a failure that
    does not say which rank died; a resume that forgets the optimizer state, the learning-rate schedule's
    position or the step within the epoch (it would redo or skip batches), or reads a half-written state: each
    ends at other weights than the uninterrupted 2-rank run's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def command(out: Path, *extra: str) -> list[str]:
        return torchrun(2, *train_command("cnn-mnist", "torch", out, small_data, tmp_path, "--distributed", "--checkpoint-every",
                                          str(CHECKPOINT_EVERY), *extra, epochs=KILL_EPOCHS))

    launcher = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_file(tmp_path / "killed" / "train_state.safetensors", launcher)
    os.kill(torchrun_worker(launcher, 1), 9)
    took, output = seconds_until_exit(launcher)
    print(f"torchrun ended {took:.1f} s after SIGKILL of rank 1 (exit {launcher.returncode})")
    assert launcher.returncode != 0 and took <= FAIL_WITHIN_S, (launcher.returncode, took)
    named = re.search(r"rank\s*:\s*1 \(local_rank: 1\)", output)
    assert named and "SIGKILL" in output, output[-3000:]
    print(output[named.start() - 200 : named.end() + 200])
    assert not (tmp_path / "killed" / "final.safetensors").exists()

    resumed = run(command(tmp_path / "killed", "--resume"))
    epoch, step = resumed_at(resumed.stdout)
    print("resumed at epoch", epoch, "step", step)
    assert (epoch, step) != (1, 0) and step % CHECKPOINT_EVERY == 0
    run(command(tmp_path / "whole"))
    diffs = relative_difference(tmp_path / "whole" / "final.safetensors", tmp_path / "killed" / "final.safetensors")
    print("torch killed + resumed vs uninterrupted:", worst(diffs))
    assert worst(diffs)[1] <= 1e-6, worst(diffs)


def jax_processes(model: str, out: Path, data: Path, tmp_path: Path, *extra: str) -> list[subprocess.Popen]:
    """Two `zoo train --distributed` JAX processes (one CPU device each) joined by jax.distributed."""
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, **JAX_CPU, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return [subprocess.Popen([sys.executable, *train_command(model, "jax", out, data, tmp_path, "--distributed", "--coordinator-address",
                                                             address, "--num-processes", "2", "--process-id", str(i), *extra,
                                                             epochs=KILL_EPOCHS)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def finished(procs: list[subprocess.Popen]) -> str:
    """Wait for every process; they must all succeed. Process 0's stdout."""
    outputs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outputs]
    return outputs[0][0]


@pytest.mark.slow
def test_jax_a_killed_process_fails_the_run_and_resume_finishes_it(small_data, tmp_path):
    """SIGKILL of process 1 of 2 right after the first training state is written. Catches: process 0 waiting
    forever in the cross-process all-reduce (jax.distributed's heartbeat, shortened to HEARTBEAT_TIMEOUT_S, must
    end it), failing without naming the lost process, or with the survivor's own error hidden (an orderly
    jax.distributed.shutdown waits for the dead process, then aborts before Python prints the traceback); a
    resume that forgets the optimizer state, the dropout RNG streams or the step position, or that places the
    restored arrays on one process's device instead of the mesh (the step would not run): each ends at other
    weights than the uninterrupted 2-process run's."""
    cfg = ("--checkpoint-every", str(CHECKPOINT_EVERY))
    procs = jax_processes("cnn-mnist", tmp_path / "killed", small_data, tmp_path, *cfg)
    wait_for_file(tmp_path / "killed" / "train_state.safetensors", procs[0])
    os.kill(procs[1].pid, 9)
    took, output = seconds_until_exit(procs[0])
    procs[1].communicate()
    print(f"JAX process 0 ended {took:.1f} s after SIGKILL of process 1 (exit {procs[0].returncode})")
    print("\n".join(line for line in output.splitlines() if "task" in line.lower() or "heartbeat" in line.lower())[-2000:])
    assert procs[0].returncode != 0 and took <= FAIL_WITHIN_S, (procs[0].returncode, took)
    assert re.search(r"task[: /]*1\b", output, re.IGNORECASE), output[-3000:]  # JAX's heartbeat names the dead process
    assert "zoo train: rank 0 of 2 failed: " in output, output[-3000:]  # and the survivor its own error (gloo's) first
    assert not (tmp_path / "killed" / "final.safetensors").exists()

    epoch, step = resumed_at(finished(jax_processes("cnn-mnist", tmp_path / "killed", small_data, tmp_path, *cfg, "--resume")))
    print("resumed at epoch", epoch, "step", step)
    assert (epoch, step) != (1, 0) and step % CHECKPOINT_EVERY == 0
    finished(jax_processes("cnn-mnist", tmp_path / "whole", small_data, tmp_path, *cfg))
    diffs = relative_difference(tmp_path / "whole" / "final.safetensors", tmp_path / "killed" / "final.safetensors")
    print("jax killed + resumed vs uninterrupted:", worst(diffs))
    assert worst(diffs)[1] <= 1e-6, worst(diffs)
