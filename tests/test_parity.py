"""The parity suite: one checkpoint, both backends, every model in the registry, the same tolerances.
Adding a model to the registry adds it here; no test code is written per model."""

import numpy as np
import pytest
from safetensors.numpy import load_file

import zoo
from zoo.backends import get_backend
from zoo.optim import OptimizerConfig
from zoo.registry import get_spec
from zoo.testing import STATS_TOL, assert_close, example_batch

MODELS = zoo.list_models()
TEXT_MODELS = [n for n in MODELS if get_spec(n).preprocessing["kind"] == "text"]
TB, JB = get_backend("torch"), get_backend("jax")
# Gradient checks use a small batch: with train-mode BatchNorm, ReLU inputs are ~N(0, 1), and one of them
# within float32 rounding (~1e-6) of 0 takes the other side of the kink in one framework, moving early
# gradients by ~1e-3 (measured on resnet-mnist, batch 16: one flip in about a third of seeds; the fused
# JAX train step and the standalone gradient can round differently). Fewer activations, fewer near-zeros.
GRAD_BATCH = 4


def no_dropout(name):
    return {k: 0.0 for k in get_spec(name).config if "dropout" in k}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """One checkpoint per model, written from a randomly initialised torch twin."""
    cache = {}

    def get(name):
        if name not in cache:
            path = tmp_path_factory.mktemp("ckpt") / f"{name}.safetensors"
            zoo.save(zoo.load(name, backend="torch", pretrained=False, seed=1), path)
            cache[name] = str(path)
        return cache[name]

    return get


def twins(path, **overrides):
    return zoo.load(path, backend="torch", **overrides), zoo.load(path, backend="jax", **overrides)


@pytest.mark.parametrize("batch_size", [1, 64])
@pytest.mark.parametrize("name", MODELS)
def test_logits_match(name, batch_size, checkpoint, record_measurement):
    torch_model, jax_model = twins(checkpoint(name))
    x, _ = example_batch(torch_model.zoo_spec, batch_size, seed=batch_size)
    diff = assert_close(JB.logits(jax_model, x), TB.logits(torch_model, x), f"{name} logits, batch {batch_size}")
    record_measurement(name, f"logits_b{batch_size}", diff)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_match(name, checkpoint, record_measurement):
    """Cross-entropy gradients for every parameter, train mode, dropout 0 (see GRAD_BATCH on ReLU kinks)."""
    torch_model, jax_model = twins(checkpoint(name), **no_dropout(name))
    x, y = example_batch(torch_model.zoo_spec, GRAD_BATCH, seed=3)
    torch_loss, torch_grads = TB.gradients(torch_model, x, y)
    jax_loss, jax_grads = JB.gradients(jax_model, x, y)
    assert set(jax_grads) == set(torch_grads)
    assert_close(jax_loss, torch_loss, f"{name} loss")
    worst = max(assert_close(jax_grads[k], torch_grads[k], f"{name} grad {k}") for k in torch_grads)
    record_measurement(name, "gradients", worst)


@pytest.mark.parametrize("name", MODELS)
def test_train_mode_forward_and_running_stats_match(name, checkpoint, record_measurement):
    """Train-mode outputs (BatchNorm on batch statistics) and every buffer after the step."""
    torch_model, jax_model = twins(checkpoint(name), **no_dropout(name))
    x, _ = example_batch(torch_model.zoo_spec, 32, seed=4)
    torch_model.train()
    jax_model.train()
    import torch

    with torch.no_grad():
        torch_out = torch_model(TB.to_input(x, torch_model.zoo_spec)).numpy()
    jax_out = np.asarray(jax_model(JB.to_input(x, jax_model.zoo_spec)))
    record_measurement(name, "train_mode_outputs", assert_close(jax_out, torch_out, f"{name} train-mode outputs"))
    torch_state, jax_state = TB.state_to_numpy(torch_model), JB.state_to_numpy(jax_model)
    worst = 0.0
    for key in torch_state:
        assert jax_state[key].dtype == torch_state[key].dtype, key
        worst = max(worst, assert_close(jax_state[key], torch_state[key], f"{name} {key}", atol=STATS_TOL, rtol=0))
    record_measurement(name, "state_after_train_forward", worst)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("name", MODELS)
def test_full_training_step_matches(name, optimizer, checkpoint, record_measurement):
    """Same batch, same weights, one optimizer step in each framework: parameters agree to 1e-2 * lr.

    Adam's first update is lr * g / (|g| + eps): where |g| is below float32 gradient noise (~1e-8) the
    update is noise in [-lr, lr] in either framework. Entries with |g| < 100 * eps in both frameworks are
    held to |diff| <= 2 * lr (catches a wrong sign or a missing step) and counted; the rest to 1e-2 * lr."""
    cfg = OptimizerConfig(name=optimizer, lr=1e-3, momentum=0.9, weight_decay=1e-2)
    torch_model, jax_model = twins(checkpoint(name), **no_dropout(name))
    x, y = example_batch(torch_model.zoo_spec, GRAD_BATCH, seed=3)
    _, torch_grads = TB.gradients(torch_model, x, y)
    _, jax_grads = JB.gradients(jax_model, x, y)
    if optimizer == "adam":  # torch's Adam weight_decay is L2: Adam sees g + wd * p
        before = TB.state_to_numpy(torch_model)
        torch_grads = {k: g + cfg.weight_decay * before[k] for k, g in torch_grads.items()}
        jax_grads = {k: g + cfg.weight_decay * before[k] for k, g in jax_grads.items()}
    TB.Trainer(torch_model, cfg).step(x, y)
    JB.Trainer(jax_model, cfg).step(x, y)
    torch_state, jax_state = TB.state_to_numpy(torch_model), JB.state_to_numpy(jax_model)
    worst, noisy = 0.0, 0
    for key in torch_state:
        diff = np.abs(jax_state[key].astype(np.float64) - torch_state[key])
        if optimizer != "sgd" and key in torch_grads:
            below_noise = (np.abs(torch_grads[key]) < 100 * cfg.eps) & (np.abs(jax_grads[key]) < 100 * cfg.eps)
            assert diff[below_noise].max(initial=0) <= 2 * cfg.lr, f"{name} {key}: update beyond lr where |g| ~ 0"
            noisy += int((below_noise & ((torch_grads[key] != 0) | (jax_grads[key] != 0))).sum())  # exact zeros agree
            diff = diff[~below_noise]
        assert diff.max(initial=0) <= 1e-2 * cfg.lr, f"{name} {key} after {optimizer}: max |diff| {diff.max():.3g} > 1e-2 * lr"
        worst = max(worst, float(diff.max(initial=0)))
    record_measurement(name, f"train_step_{optimizer}", worst)
    record_measurement(name, f"train_step_{optimizer}_entries_below_grad_noise", noisy)


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
