"""Helpers for parity checks, used by the test suite and usable for your own twins (NumPy only)."""

from __future__ import annotations

import numpy as np

from .registry import ModelSpec

# One tolerance for every model and check: atol + rtol * |reference|, float32, precision pinned.
ATOL = 1e-5
RTOL = 1e-5
OPTIMIZER_TOL = 1e-6  # torch.optim vs optax fed identical gradients, 10 steps
STATS_TOL = 1e-6  # BatchNorm running statistics after a training step
# float64 runs (tests/float64_parity.py), where ReLU-kink flips and Adam's noise amplification vanish:
# |a - b| <= F64_ATOL + F64_RTOL * |b|, a few hundred float64 rounding steps (eps 2.2e-16).
F64_ATOL = 1e-13
F64_RTOL = 1e-12
F64_STEP_ATOL = 1e-11  # parameters after 3 optimizer steps (Adam turns a gradient error d into d / eps of lr)
F64_MAX_EXEMPT_SHARE = 0.01  # Adam entries with 0 < |g| < eps (rounding noise made O(lr)): counted, capped, held to 2 lr per step


LOGITS_ATOL_CAP = 1e-4  # the most any model's logits may be allowed, with float64 evidence that it is rounding
PARITY_DEFAULTS = {"tier": "fast", "batch": 64}  # a registry entry's `parity` overrides these, and the input's height and width


def parity_settings(name: str) -> dict:
    """How the parity suite tests `name`: its tier ("fast" or "slow"), batch size, and the image size it feeds
    (the registry's `parity` entry; big models run at reduced resolution, or in the slow tier)."""
    from .registry import model_info

    return {**PARITY_DEFAULTS, **model_info(name).get("parity", {})}


def in_slow_tier(name: str) -> bool:
    """Whether the parity suite checks `name` in the slow tier (big models at full resolution)."""
    return parity_settings(name)["tier"] == "slow"


def recording_parity_report() -> bool:
    """A run meant to produce the parity report (`ZOO_PARITY_REPORT=1`): it records, and runs the float64 study in
    full (every seed) where other runs, CI's included, run a smoke of it."""
    import os

    return os.environ.get("ZOO_PARITY_REPORT") == "1"


# Checks of float32 training (gradients, train-mode forward and buffers, optimizer steps). A model whose entry sets
# `parity.float32_train_checks` false has them in float64 only: ResNet-50 at 224x224 has ~10^7 ReLU and max-pool
# kinks per batch, a float64 margin of ~1e-8 to the nearest, and float32 gradients 0.3 apart after a flip, while
# its float64 twins agree to 1e-13 (gradients, and every parameter and buffer after the optimizer steps).
FLOAT32_TRAIN_CHECKS = ("gradients", "train_mode_outputs", "state_after_train_forward", "train_step_sgd", "train_step_adam",
                        "train_step_adamw", "train_step_adamw_noisy_entries")


def logits_atol(name: str) -> float:
    """The absolute tolerance for `name`'s logits: ATOL, or the registry's `parity.logits_atol` where depth makes
    float32 rounding exceed it (ViT-B/16), never above LOGITS_ATOL_CAP. The float64 parity run backs it: the twins
    agree to ~1e-13 there, and each float32 twin alone is that far from its own float64 logits."""
    atol = parity_settings(name).get("logits_atol", ATOL)
    if not ATOL <= atol <= LOGITS_ATOL_CAP:
        raise ValueError(f"{name}: parity.logits_atol {atol} is outside [{ATOL}, {LOGITS_ATOL_CAP}]")
    return atol


def parity_spec(spec: ModelSpec) -> ModelSpec:
    """`spec` with the input size the parity suite feeds it (`parity_settings`), for `example_batch`."""
    settings = parity_settings(spec.name)
    sizes = {k: settings[k] for k in ("height", "width") if k in settings}
    return spec.replace(preprocessing={**spec.preprocessing, **sizes}) if sizes else spec


def without_constant_parameters(tensors: dict[str, np.ndarray], parameters, seed: int = 0) -> dict[str, np.ndarray]:
    """`tensors` with every parameter (a name in `parameters`) whose entries are all equal redrawn uniformly in
    [-1, 1] (seeded); buffers (running statistics, counters) are kept. Such initialisations hide layers from a
    comparison: ViT's zero head makes every logit 0 and every other gradient 0, ConvNeXt's 1e-6 layer scale shrinks
    its blocks' outputs below any tolerance, and BatchNorm's 1 and 0 make a swapped scale and bias invisible."""
    rng = np.random.default_rng(seed)
    out = dict(tensors)
    for name in sorted(parameters):
        value = tensors[name]
        if value.size > 1 and np.issubdtype(value.dtype, np.floating) and (value == value.flat[0]).all():
            out[name] = rng.uniform(-1.0, 1.0, size=value.shape).astype(value.dtype)
    return out


def without_random_drops(spec: ModelSpec) -> dict[str, float]:
    """Config overrides that turn off every random drop (dropout, stochastic depth), for deterministic checks."""
    return {k: 0.0 for k in spec.config if "dropout" in k or "stochastic_depth" in k}


def example_batch(spec: ModelSpec, batch_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A canonical input batch and labels for `spec`: normalised NHWC images, or right-padded token ids
    whose lengths cover 1..max_len (the first row has length 1, the second max_len)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(spec.labels) or 2, size=batch_size)
    p = spec.preprocessing
    if p["kind"] == "image":
        from .preprocess import normalise

        pixels = rng.integers(0, 256, size=(batch_size, p["height"], p["width"], p["channels"])).astype(np.uint8)
        return normalise(pixels, p), labels
    max_len, pad_id = p["max_len"], p["pad_id"]
    lengths = rng.integers(1, max_len + 1, size=batch_size)
    lengths[0] = 1
    if batch_size > 1:
        lengths[1] = max_len
    width = int(lengths.max())
    ids = rng.integers(pad_id + 2, spec.config["vocab_size"], size=(batch_size, width))  # skip [PAD], [UNK]
    ids[np.arange(width)[None, :] >= lengths[:, None]] = pad_id
    return ids.astype(np.int64), labels


def max_violation(actual: np.ndarray, reference: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> float:
    """max(|a - r| - rtol*|r|); the check passes when this is <= atol."""
    a, r = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(a - r) - rtol * np.abs(r))) if a.size else 0.0


def assert_close(actual, reference, what: str, atol: float = ATOL, rtol: float = RTOL) -> float:
    actual, reference = np.asarray(actual), np.asarray(reference)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    diff = float(np.max(np.abs(actual.astype(np.float64) - reference))) if actual.size else 0.0
    assert max_violation(actual, reference, atol, rtol) <= atol, f"{what}: max |diff| {diff:.3g} > atol {atol} + rtol {rtol}"
    return diff
