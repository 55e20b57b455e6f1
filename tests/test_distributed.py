"""Data-parallel training: N ranks (torchrun + DDP, JAX devices and processes) and gradient accumulation give
the result of one process with the same global batch. The data-side checks are fast; the runs are slow tier."""

from __future__ import annotations

import numpy as np
import pytest

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
