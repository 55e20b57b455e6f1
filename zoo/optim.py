"""One optimizer config, two frameworks: `torch.optim` and `optax` built to do the same update.

Weight decay follows PyTorch's meaning per optimizer: for `sgd` and `adam` it is L2 added to the gradient
(optax: `add_decayed_weights` before the optimizer), for `adamw` it is decoupled (`optax.adamw`).
The learning-rate schedule is one function, evaluated with NumPy for torch and traced with jax.numpy
for optax, so both frameworks see the same rate at every step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine (both with linear warm-up)
    warmup_steps: int = 0
    total_steps: int = 0  # cosine decays to 0 at total_steps
    clip_norm: float = 0.0  # > 0: all gradients scaled together to at most this global L2 norm (0: off)

    def __post_init__(self):
        if self.name not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.name!r}; use sgd, adam or adamw")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; use constant or cosine")

    def to_dict(self) -> dict:
        return asdict(self)


def learning_rate(cfg: OptimizerConfig, step, xp=None):
    """Rate used for update number `step` (0-based). `xp` is numpy (default) or jax.numpy."""
    if cfg.schedule == "cosine" and cfg.total_steps <= 0:
        raise ValueError("the cosine schedule needs total_steps > 0 (the trainer sets it from epochs x steps)")
    if xp is None:
        import numpy as xp
    step = xp.asarray(step, dtype=float)  # float64 in NumPy (and in JAX with x64): torch gets cfg.lr exactly
    factor = xp.asarray(1.0, dtype=step.dtype)
    if cfg.warmup_steps > 0:
        factor = xp.minimum(factor, (step + 1) / cfg.warmup_steps)
    if cfg.schedule == "cosine":
        progress = xp.clip((step - cfg.warmup_steps) / max(cfg.total_steps - cfg.warmup_steps, 1), 0.0, 1.0)
        factor = factor * 0.5 * (1.0 + xp.cos(math.pi * progress))
    return cfg.lr * factor


def torch_optimizer(params, cfg: OptimizerConfig):
    import torch

    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)


def clip_torch_gradients(params, cfg: OptimizerConfig) -> None:
    """`clip_norm` > 0: `torch.nn.utils.clip_grad_norm_` over the trainable parameters, before the step."""
    if cfg.clip_norm > 0:
        import torch

        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)


def _optax_clip_like_torch(max_norm: float):
    """`clip_grad_norm_`'s rule in optax: scale by max_norm / (norm + 1e-6) where that is below 1
    (`optax.clip_by_global_norm` divides by the norm alone, a 1e-6 relative difference)."""
    import jax
    import jax.numpy as jnp
    import optax

    def update(updates, state, params=None):
        scale = jnp.minimum(1.0, max_norm / (optax.tree_utils.tree_norm(updates) + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def set_torch_learning_rate(optimizer, cfg: OptimizerConfig, step: int) -> float:
    """The schedule's rate for `step`, times each parameter group's `lr_scale` (fine-tuning's backbone scale)."""
    lr = float(learning_rate(cfg, step))
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def optax_optimizer(cfg: OptimizerConfig, scaled=None, lr_scale: float = 1.0):
    """The optax twin of `torch_optimizer`. `scaled(params)` -> a pytree of bools: those parameters' updates
    are multiplied by `lr_scale` (the same as a torch parameter group with `lr * lr_scale`, decay included)."""
    import optax

    tx = _optax_base(cfg)
    if cfg.clip_norm > 0:
        tx = optax.chain(_optax_clip_like_torch(cfg.clip_norm), tx)
    if scaled is None or lr_scale == 1.0:
        return tx
    return optax.chain(tx, optax.masked(optax.scale(lr_scale), scaled))


def _optax_base(cfg: OptimizerConfig):
    import jax.numpy as jnp
    import optax

    if cfg.schedule == "constant" and cfg.warmup_steps == 0:
        lr = cfg.lr
    else:
        def lr(count):
            return learning_rate(cfg, count, jnp)

    if cfg.name == "adamw":
        return optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        tx = optax.adam(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps)
    else:
        tx = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    if cfg.weight_decay:
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)  # L2, as torch's weight_decay
    return tx
