"""torch.optim and optax, built from one OptimizerConfig and fed identical gradients, agree over 10 steps."""

import numpy as np
import pytest
import torch

from zoo.optim import OptimizerConfig, learning_rate, optax_optimizer, torch_optimizer
from zoo.testing import OPTIMIZER_TOL

CONFIGS = {
    "sgd-momentum": OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
    "sgd-nesterov-l2": OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam": OptimizerConfig(name="adam", lr=1e-3),
    "adam-l2": OptimizerConfig(name="adam", lr=1e-3, weight_decay=1e-2),
    "adamw": OptimizerConfig(name="adamw", lr=1e-3, weight_decay=5e-2),
    "adamw-cosine-warmup": OptimizerConfig(name="adamw", lr=1e-3, weight_decay=1e-2, schedule="cosine", warmup_steps=3, total_steps=10),
    # gradient norms here range from ~1e-3 to ~20: clipping at 1 acts on some steps and not on others, before
    # the L2 term (torch.optim adds it inside the step; optax chains it after the clip)
    "sgd-l2-clip": OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, clip_norm=1.0),
}


@pytest.mark.parametrize("label", CONFIGS)
def test_same_gradients_same_parameters(label):
    import jax.numpy as jnp
    import optax

    cfg = CONFIGS[label]
    rng = np.random.default_rng(0)
    shapes = {"w": (32, 16), "b": (16,)}
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: (rng.normal(size=s) * 10.0 ** rng.integers(-4, 1)).astype(np.float32) for k, s in shapes.items()} for _ in range(10)]

    torch_params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = torch_optimizer(list(torch_params.values()), cfg)
    from zoo.optim import clip_torch_gradients, set_torch_learning_rate

    tx = optax_optimizer(cfg)
    jax_params = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(jax_params)
    for step, g in enumerate(grads):
        set_torch_learning_rate(opt, cfg, step)
        for k, p in torch_params.items():
            p.grad = torch.from_numpy(g[k].copy())
        clip_torch_gradients(list(torch_params.values()), cfg)
        opt.step()
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, jax_params)
        jax_params = optax.apply_updates(jax_params, updates)
    for k in shapes:
        diff = np.abs(np.asarray(jax_params[k]) - torch_params[k].detach().numpy()).max()
        assert diff <= OPTIMIZER_TOL, f"{label} {k}: max |diff| {diff:.3g} after 10 steps"
        assert not np.allclose(torch_params[k].detach().numpy(), params[k]), "parameters did not move"


def test_schedule_warmup_then_cosine_to_zero():
    cfg = OptimizerConfig(lr=1.0, schedule="cosine", warmup_steps=4, total_steps=104)
    assert learning_rate(cfg, 0) == pytest.approx(0.25)
    assert learning_rate(cfg, 3) == pytest.approx(1.0)
    assert learning_rate(cfg, 54) == pytest.approx(0.5)
    assert learning_rate(cfg, 104) == pytest.approx(0.0, abs=1e-7)


def test_bad_optimizer_names_are_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        OptimizerConfig(name="rmsprop")
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate(OptimizerConfig(schedule="cosine"), 0)


def test_clipping_scales_every_gradient_by_one_factor_in_both_frameworks():
    """A gradient of global norm 10 clipped at 1: SGD without momentum moves each parameter by lr * g / 10 in
    both. Catches: clipping per tensor instead of globally, clipping skipped in one framework."""
    import jax.numpy as jnp

    cfg = OptimizerConfig(name="sgd", lr=1.0, momentum=0.0, clip_norm=1.0)
    g = {"w": np.full((4,), 3.0, np.float32), "b": np.array([8.0], np.float32)}  # norm sqrt(36 + 64) = 10
    tx = optax_optimizer(cfg)
    updates, _ = tx.update({k: jnp.asarray(v) for k, v in g.items()}, tx.init({k: jnp.zeros_like(jnp.asarray(v)) for k, v in g.items()}))
    torch_params = {k: torch.nn.Parameter(torch.zeros(v.shape)) for k, v in g.items()}
    for k, p in torch_params.items():
        p.grad = torch.from_numpy(g[k].copy())
    from zoo.optim import clip_torch_gradients

    clip_torch_gradients(list(torch_params.values()), cfg)
    torch_optimizer(list(torch_params.values()), cfg).step()
    for k in g:
        expected = -g[k] / (10.0 + 1e-6)
        np.testing.assert_allclose(np.asarray(updates[k]), expected, rtol=1e-6)
        np.testing.assert_allclose(torch_params[k].detach().numpy(), expected, rtol=1e-6)
