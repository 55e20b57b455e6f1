"""The parity suite: one checkpoint, both backends, every model in the registry, the same tolerances.
Adding a model to the registry adds it here; no test code is written per model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from filelock import FileLock
from safetensors.numpy import load_file

import zoo
from zoo.backends import get_backend
from zoo.optim import OptimizerConfig
from zoo.registry import get_spec
from zoo.testing import (
    ATOL,
    F64_ATOL,
    F64_MAX_EXEMPT_SHARE,
    F64_STEP_ATOL,
    STATS_TOL,
    assert_close,
    example_batch,
    in_slow_tier,
    logits_atol,
    parity_settings,
    parity_spec,
    recording_parity_report,
    without_constant_parameters,
    without_random_drops,
)

# The slow tier's big models (their float64 runs included) hold one lock shared by the xdist workers, so they run one
# at a time: ViT-B/16's float64 run peaks at 11.6 GB and its float32 checks at 8 GB, and a worker keeps much of what
# it has allocated; two at once overran this machine's 24 GB. The float64 runs come first in this file, so they run
# while the workers are still small. Under `-n 2`, conftest's scheduler gives them all to one worker as one unit, so
# the other never waits on the lock.
BIG_MEMORY = pytest.mark.big_memory


def by_tier(names):
    """Each model in its registry tier (`parity.tier`): big ones at full resolution run in the slow tier."""
    return [pytest.param(n, marks=[pytest.mark.slow, BIG_MEMORY]) if in_slow_tier(n) else n for n in names]


MODELS = by_tier(zoo.list_models())
TEXT_MODELS = [n for n in zoo.list_models() if get_spec(n).preprocessing["kind"] == "text"]
TB, JB = get_backend("torch"), get_backend("jax")


def float64_groups() -> dict[str, list[str]]:
    """Models whose float64 check is one and the same computation (new random weights and batches built from the
    same architecture, config, input shape and label count; an input-adaptation rule changes none of it, so a
    fine-tuned twin such as cnn-usps shares cnn-mnist's): the first name runs it, and it counts for every member."""
    groups: dict[str, list[str]] = {}
    for name in zoo.list_models():
        spec = get_spec(name)
        shape = {k: v for k, v in spec.preprocessing.items() if k != "adapt"}
        key = json.dumps([spec.arch, spec.config, shape, len(spec.labels)], sort_keys=True)
        groups.setdefault(key, []).append(name)
    return {members[0]: members for members in groups.values()}


FLOAT64_GROUPS = float64_groups()
FLOAT64_SCRIPT = Path(__file__).with_name("float64_parity.py")
FLOAT64_SMOKE_SEEDS = 1  # the float64 study outside a report run: one seed catches every planted bug of the mutation suite
# float32 gradient checks: a ReLU input within float32 rounding (~1e-6) of 0, or a max-pool window whose
# two largest inputs are that close, can take the other side of the kink in one framework and move early
# gradients by ~1e-2 (resnet-mnist: 3 of 40 seeds). The float32 checks therefore run on a batch whose
# every kink input is at least KINK_MARGIN away (measured in float64); the float64 checks run on any seed.
GRAD_BATCH = 4
KINK_MARGIN = 1e-5
MAX_NOISY_SHARE = 0.001  # Adam entries whose gradient difference Adam makes O(lr) (float32 noise near 0): counted, capped


class KinkMargin(torch.overrides.TorchFunctionMode):
    """Records how close a forward pass comes to a kink: the smallest |ReLU input|, and the smallest gap
    between the two largest inputs of a 2x2 max-pool window whose maximum is positive."""

    def __init__(self):
        super().__init__()
        self.margin = float("inf")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("relu", "relu_"):
            self.margin = min(self.margin, float(args[0].abs().min()))
        elif name.startswith("max_pool2d"):
            windows = args[0].unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2).sort(dim=-1).values
            positive = windows[..., -1] > 0
            if positive.any():
                self.margin = min(self.margin, float((windows[..., -1] - windows[..., -2])[positive].min()))
        return func(*args, **(kwargs or {}))


def kink_clear_batch(torch_model, batch_size, first_seed=0, tries=200):
    """The first seeded batch on which `torch_model` (in float64, train mode) stays KINK_MARGIN clear of
    every kink, and that seed. A model whose registry entry sets `parity.kink_search` false (a deep network:
    with ~10^6 ReLU inputs per batch no batch clears them all) gets the first batch, unsearched."""
    import copy

    spec = parity_spec(torch_model.zoo_spec)
    if not parity_settings(spec.name).get("kink_search", True):
        return (*example_batch(spec, batch_size, seed=first_seed), first_seed)
    reference = copy.deepcopy(torch_model).double().train()
    for seed in range(first_seed, first_seed + tries):
        x, y = example_batch(spec, batch_size, seed=seed)
        inputs = TB.to_input(x, spec)
        with torch.no_grad(), KinkMargin() as probe:
            reference(inputs.double() if inputs.is_floating_point() else inputs)
        if probe.margin >= KINK_MARGIN:
            return x, y, seed
    raise AssertionError(f"{spec.name}: no batch among seeds {first_seed}..{first_seed + tries - 1} clears every kink by {KINK_MARGIN}")


def float32_training_checked(name):
    """False where the registry keeps float32 training checks out (`parity.float32_train_checks`; see FLOAT32_TRAIN_CHECKS)."""
    return parity_settings(name).get("float32_train_checks", True)


def training_models():
    """MODELS whose float32 training checks run; the others are checked in float64 only (test_float64_...)."""
    return [p for p in MODELS if float32_training_checked(p if isinstance(p, str) else p.values[0])]


def no_dropout(name):
    return without_random_drops(get_spec(name))


@pytest.fixture(autouse=True)
def one_big_memory_test_at_a_time(request, tmp_path_factory):
    """Tests marked `big_memory` take a lock in the directory all xdist workers' temporary directories share."""
    if request.node.get_closest_marker("big_memory") is None:
        yield
        return
    with FileLock(tmp_path_factory.getbasetemp().parent / "big-memory.lock"):
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """One checkpoint per model, written from a randomly initialised torch twin whose constant parameters
    (zero heads, 1e-6 layer scales, BatchNorm's 1 and 0) are redrawn, so that every layer shows in the checks."""
    cache = {}

    def get(name):
        if name not in cache:
            path = tmp_path_factory.mktemp("ckpt") / f"{name}.safetensors"
            model = zoo.load(name, backend="torch", pretrained=False, seed=1)
            state = without_constant_parameters(TB.state_to_numpy(model), dict(model.named_parameters()), seed=1)
            zoo.save(TB.load_numpy_state(model, state, "parity weights"), path)
            cache[name] = str(path)
        return cache[name]

    return get


def twins(path, **overrides):
    return zoo.load(path, backend="torch", **overrides), zoo.load(path, backend="jax", **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("name", by_tier(sorted(FLOAT64_GROUPS)))
def test_float64_gradients_and_steps_match(name, record_measurement):
    """Both twins in float64 (JAX's x64 needs its own process), new weights and batches for each seed: loss and
    gradients to F64_ATOL, parameters after 3 steps of SGD+momentum+L2, Adam+L2 and AdamW to F64_STEP_ATOL.
    Weight decay, momentum and bias correction each move parameters far beyond that. The study, 20 seeds (or the
    registry entry's count), runs when the parity report is recorded; other runs, CI's included, run its first
    FLOAT64_SMOKE_SEEDS seed(s). (`ZOO_FLOAT64_SEEDS` sets a lower count.)"""
    settings = parity_settings(name)  # a big model's entry may ask for fewer seeds and steps
    full = settings.get("float64_seeds", 20)
    seeds = min(int(os.environ.get("ZOO_FLOAT64_SEEDS", full)), full if recording_parity_report() else FLOAT64_SMOKE_SEEDS)
    steps = settings.get("float64_steps", 3)
    run = subprocess.run([sys.executable, str(FLOAT64_SCRIPT), name, "--seeds", str(seeds), "--steps", str(steps)],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == seeds
    for r in rows:
        where = f"{name} seed {r['seed']}"
        assert r["logits_f64_max_violation"] <= F64_ATOL, f"{where}: float64 logits differ by {r['logits_f64_max_abs_diff']:.3g}"
        assert r["loss_violation"] <= F64_ATOL, f"{where}: float64 loss"
        assert r["grad_max_violation"] <= F64_ATOL, f"{where}: float64 gradients differ by {r['grad_max_abs_diff']:.3g}"
        for opt in ("sgd", "adam", "adamw"):
            assert r[f"step_{opt}_max_violation"] <= F64_STEP_ATOL, f"{where}: float64 parameters after {steps} {opt} steps"
            assert r[f"step_{opt}_exempt_entries"] <= F64_MAX_EXEMPT_SHARE * r["parameters"], f"{where}: {opt} exemptions"
            assert r[f"step_{opt}_exempt_max_abs_diff"] <= 2 * r[f"step_{opt}_lr"] * r["steps"], f"{where}: {opt} noisy entries"
    for member in FLOAT64_GROUPS[name]:
        record_measurement(member, "float64_seeds", seeds)
        record_measurement(member, "float64_steps", steps)
        record_measurement(member, "float64_gradients", max(r["grad_max_abs_diff"] for r in rows))
        record_measurement(member, "float64_logits", max(r["logits_f64_max_abs_diff"] for r in rows))
        rounding = max(max(r["logits_f32_torch_rounding"], r["logits_f32_jax_rounding"]) for r in rows)
        record_measurement(member, "float32_logits_rounding", rounding)
        if logits_atol(member) > ATOL:  # a wider logits bound stands only where one twin's own float32 rounding exceeds ATOL
            assert rounding > ATOL, f"{member}: float32 rounding {rounding:.3g} <= {ATOL}, so parity.logits_atol is not needed"
        for opt in ("sgd", "adam", "adamw"):
            record_measurement(member, f"float64_step_{opt}_violation", max(r[f"step_{opt}_max_violation"] for r in rows))
            record_measurement(member, f"float64_step_{opt}_exempt_entries", max(r[f"step_{opt}_exempt_entries"] for r in rows))


@pytest.mark.parametrize("batch", ["single", "batch"])
@pytest.mark.parametrize("name", MODELS)
def test_logits_match(name, batch, checkpoint, record_measurement):
    """Eval-mode logits for one example and for the registry's parity batch (64 unless the entry says)."""
    batch_size = 1 if batch == "single" else parity_settings(name)["batch"]
    torch_model, jax_model = twins(checkpoint(name))
    x, _ = example_batch(parity_spec(torch_model.zoo_spec), batch_size, seed=batch_size)
    diff = assert_close(JB.logits(jax_model, x), TB.logits(torch_model, x), f"{name} logits, batch {batch_size}", atol=logits_atol(name))
    record_measurement(name, "logits_b1" if batch == "single" else "logits_batch", diff)


@pytest.mark.parametrize("name", training_models())
def test_gradients_match(name, checkpoint, record_measurement):
    """Cross-entropy gradients for every parameter, train mode, dropout 0, on a kink-clear batch."""
    torch_model, jax_model = twins(checkpoint(name), **no_dropout(name))
    x, y, seed = kink_clear_batch(torch_model, GRAD_BATCH)
    torch_loss, torch_grads = TB.gradients(torch_model, x, y)
    jax_loss, jax_grads = JB.gradients(jax_model, x, y)
    assert set(jax_grads) == set(torch_grads)
    assert_close(jax_loss, torch_loss, f"{name} loss")
    worst = max(assert_close(jax_grads[k], torch_grads[k], f"{name} grad {k}") for k in torch_grads)
    record_measurement(name, "gradients", worst)
    record_measurement(name, "gradients_kink_clear_seed", seed)


@pytest.mark.parametrize("name", training_models())
def test_train_mode_forward_and_running_stats_match(name, checkpoint, record_measurement):
    """Train-mode outputs (BatchNorm on batch statistics) and every buffer after the step."""
    torch_model, jax_model = twins(checkpoint(name), **no_dropout(name))
    x, _ = example_batch(parity_spec(torch_model.zoo_spec), min(32, parity_settings(name)["batch"]), seed=4)
    torch_model.train()
    jax_model.train()
    with torch.no_grad():
        torch_out = torch_model(TB.to_input(x, torch_model.zoo_spec)).numpy()
    jax_out = np.asarray(jax_model(JB.to_input(x, jax_model.zoo_spec)))
    record_measurement(name, "train_mode_outputs", assert_close(jax_out, torch_out, f"{name} train-mode outputs", atol=logits_atol(name)))
    torch_state, jax_state = TB.state_to_numpy(torch_model), JB.state_to_numpy(jax_model)
    worst = 0.0
    for key in torch_state:
        assert jax_state[key].dtype == torch_state[key].dtype, key
        worst = max(worst, assert_close(jax_state[key], torch_state[key], f"{name} {key}", atol=STATS_TOL, rtol=0))
    record_measurement(name, "state_after_train_forward", worst)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("name", training_models())
def test_full_training_step_matches(name, optimizer, checkpoint, record_measurement):
    """Same batch, same weights, one optimizer step in each framework: parameters agree to 1e-2 * lr.

    Adam's first update is lr * g / (|g| + eps), so a gradient difference d (already checked above at the
    global tolerance) becomes lr * d * eps / (|g| + eps)^2: far below float32 noise it is O(lr). Entries
    where the two frameworks' gradients predict first updates more than 0.5e-2 * lr apart are held to
    2 * lr, counted, and capped at MAX_NOISY_SHARE of all entries; every other entry, exact zeros
    included, to 1e-2 * lr. The float64 test checks every entry over 3 steps, tightly (test_float64_gradients_and_steps_match)."""
    cfg = OptimizerConfig(name=optimizer, lr=1e-3, momentum=0.9, weight_decay=1e-2)
    torch_model, jax_model = twins(checkpoint(name), **no_dropout(name))
    x, y, _ = kink_clear_batch(torch_model, GRAD_BATCH)
    _, torch_grads = TB.gradients(torch_model, x, y)
    _, jax_grads = JB.gradients(jax_model, x, y)
    if optimizer == "adam":  # torch's Adam weight_decay is L2: Adam sees g + wd * p
        before = TB.state_to_numpy(torch_model)
        torch_grads = {k: g + cfg.weight_decay * before[k] for k, g in torch_grads.items()}
        jax_grads = {k: g + cfg.weight_decay * before[k] for k, g in jax_grads.items()}
    TB.trainer(torch_model, cfg).step(x, y)
    JB.trainer(jax_model, cfg).step(x, y)
    torch_state, jax_state = TB.state_to_numpy(torch_model), JB.state_to_numpy(jax_model)
    worst, noisy, entries = 0.0, 0, 0
    for key in torch_state:
        diff = np.abs(jax_state[key].astype(np.float64) - torch_state[key])
        entries += diff.size
        if optimizer != "sgd" and key in torch_grads:
            t, j = torch_grads[key], jax_grads[key]
            below_noise = np.abs(t / (np.abs(t) + cfg.eps) - j / (np.abs(j) + cfg.eps)) > 0.5e-2  # amplified by Adam
            assert diff[below_noise].max(initial=0) <= 2 * cfg.lr, f"{name} {key}: update beyond lr where |g| ~ 0"
            noisy += int(below_noise.sum())
            diff = diff[~below_noise]
        assert diff.max(initial=0) <= 1e-2 * cfg.lr, f"{name} {key} after {optimizer}: max |diff| {diff.max():.3g} > 1e-2 * lr"
        worst = max(worst, float(diff.max(initial=0)))
    assert noisy <= MAX_NOISY_SHARE * entries, f"{name}: {noisy} of {entries} entries exempted as gradient noise"
    record_measurement(name, f"train_step_{optimizer}", worst)
    record_measurement(name, f"train_step_{optimizer}_noisy_entries", noisy)


GPU = torch.cuda.is_available() and any(d.platform == "gpu" for d in jax.devices())


@pytest.mark.skipif(not GPU, reason="no GPU visible to both PyTorch and JAX here; these checks run wherever one is")
@pytest.mark.parametrize("name", training_models())
def test_logits_gradients_and_sgd_step_match_on_gpu(name, checkpoint, record_measurement):
    """The same checks on the GPU (TF32 off in torch, `highest` matmul precision in JAX, as everywhere):
    logits, gradients on a kink-clear batch, and one SGD step, to the CPU tolerances."""
    from zoo.backends import backend_for

    path = checkpoint(name)
    torch_model = zoo.load(path, backend="torch", device="cuda", **no_dropout(name))
    jax_model = zoo.load(path, backend="jax", device="gpu", **no_dropout(name))
    tb, jb = backend_for(torch_model), backend_for(jax_model)
    assert str(tb.device).startswith("cuda") and jb.device.platform == "gpu"
    x, _ = example_batch(parity_spec(torch_model.zoo_spec), parity_settings(name)["batch"], seed=64)
    record_measurement(name, "gpu_logits_batch", assert_close(jb.logits(jax_model, x), tb.logits(torch_model, x), f"{name} GPU logits",
                                                                 atol=logits_atol(name)))
    x, y, _ = kink_clear_batch(zoo.load(path, backend="torch", **no_dropout(name)), GRAD_BATCH)
    (torch_loss, torch_grads), (jax_loss, jax_grads) = tb.gradients(torch_model, x, y), jb.gradients(jax_model, x, y)
    assert_close(jax_loss, torch_loss, f"{name} GPU loss")
    record_measurement(name, "gpu_gradients", max(assert_close(jax_grads[k], torch_grads[k], f"{name} GPU grad {k}") for k in torch_grads))
    cfg = OptimizerConfig(name="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-2)
    tb.trainer(torch_model, cfg).step(x, y)
    jb.trainer(jax_model, cfg).step(x, y)
    torch_state, jax_state = tb.state_to_numpy(torch_model), jb.state_to_numpy(jax_model)
    worst = max(float(np.abs(jax_state[k].astype(np.float64) - torch_state[k]).max(initial=0)) for k in torch_state)
    assert worst <= 1e-2 * cfg.lr, f"{name}: GPU parameters after one SGD step differ by {worst:.3g}"
    record_measurement(name, "gpu_train_step_sgd", worst)


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_bit_exact(name, checkpoint, tmp_path):
    """torch -> file -> flax -> file -> torch reproduces every tensor bit for bit."""
    original = checkpoint(name)
    jax_model = zoo.load(original, backend="jax")
    zoo.save(jax_model, tmp_path / "from_jax.safetensors")
    torch_again = zoo.load(str(tmp_path / "from_jax.safetensors"), backend="torch")
    zoo.save(torch_again, tmp_path / "back.safetensors")
    a, b = load_file(original), load_file(str(tmp_path / "back.safetensors"))
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), f"{name}: {key} changed in the round trip"


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_from_jax_is_bit_exact(name, tmp_path):
    """A JAX-initialised model: flax -> file -> torch -> file reproduces every tensor bit for bit."""
    jax_model = zoo.load(name, backend="jax", pretrained=False, seed=5)
    zoo.save(jax_model, tmp_path / "jax.safetensors")
    zoo.save(zoo.load(str(tmp_path / "jax.safetensors"), backend="torch"), tmp_path / "torch.safetensors")
    expected = JB.state_to_numpy(jax_model)
    a, b = load_file(str(tmp_path / "jax.safetensors")), load_file(str(tmp_path / "torch.safetensors"))
    assert set(a) == set(b) == set(expected)
    for key in a:
        assert a[key].dtype == b[key].dtype == expected[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes() == expected[key].tobytes(), f"{name}: {key} changed on the way to torch"


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_padding_changes_nothing(name, checkpoint, record_measurement):
    """Every sequence of a padded mixed-length batch (lengths 1..max_len) gets, in both backends, the
    logits it gets alone; extra padding columns change nothing either."""
    torch_model, jax_model = twins(checkpoint(name))
    ids, _ = example_batch(torch_model.zoo_spec, 8, seed=7)
    pad_id = torch_model.zoo_spec.preprocessing["pad_id"]
    max_len = torch_model.zoo_spec.preprocessing["max_len"]
    ids = ids[[0] + [i for i in range(2, len(ids))]]  # drop the max_len row so one more column fits
    ids = ids[:, : int((ids != pad_id).sum(1).max())]
    assert ids.shape[1] < max_len and (ids != pad_id).sum(1).min() == 1
    worst = 0.0
    for backend, model in ((TB, torch_model), (JB, jax_model)):
        batched = backend.logits(model, ids)
        alone = np.concatenate([backend.logits(model, row[None, : int((row != pad_id).sum())]) for row in ids])
        worst = max(worst, assert_close(batched, alone, f"{name} {backend.NAME}: batched vs alone"))
        wider = np.concatenate([ids, np.full((len(ids), 1), pad_id)], axis=1)  # one more padding column
        assert_close(backend.logits(model, wider), batched, f"{name} {backend.NAME}: extra padding")
    record_measurement(name, "padded_vs_alone", worst)
