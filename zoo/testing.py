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
