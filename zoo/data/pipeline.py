"""One input pipeline for both backends: the same seed gives the same order, the same batches and the
same augmentation in PyTorch and JAX, because all of it is NumPy. Every rank of a data-parallel run can
take its slice of the same global batch (`rank`, `world_size`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..preprocess import normalise
from ..registry import ModelSpec
from . import load_split

PAD_MULTIPLE = 32  # text batches are padded to a multiple of this: few shapes, few JAX compilations


@dataclass
class ArraySet:
    """Inputs ready for batching: uint8 images (N, H, W, C), or token-id sequences (object array of int32 arrays)."""

    inputs: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ArraySet:
        return ArraySet(self.inputs[index], self.labels[index])


def arrays_for(spec: ModelSpec, split) -> ArraySet:
    """A Split (raw images or texts) as the model's inputs: images adapted by the spec's recorded rule
    (`preprocessing["adapt"]`, zoo.adapt) when it has one, texts encoded by its tokenizer."""
    if spec.preprocessing["kind"] == "image":
        if spec.preprocessing.get("adapt"):
            from ..adapt import adapt_images

            return ArraySet(adapt_images(split.inputs, spec.preprocessing["adapt"], spec.preprocessing), split.labels)
        return ArraySet(split.inputs, split.labels)
    from ..text import encode

    ids = encode(split.inputs, spec.tokenizer_json, spec.preprocessing)
    seqs = np.empty(len(ids), dtype=object)
    seqs[:] = [np.asarray(s, np.int32) for s in ids]
    return ArraySet(seqs, split.labels)


def load_eval_split(spec: ModelSpec, split: str = "test", data_dir=None) -> ArraySet:
    """One split of the model's dataset, ready for batching (no train split needed)."""
    return arrays_for(spec, load_split(spec.dataset, split, data_dir))


def load_datasets(spec: ModelSpec, data_dir=None, val_fraction: float = 0.1, seed: int = 0) -> dict[str, ArraySet]:
    """train / val / test, ready for batching: the dataset's own validation split where it has one
    (Rotten Tomatoes), else one held out of train with a seeded permutation."""
    from . import DATASETS

    train = arrays_for(spec, load_split(spec.dataset, "train", data_dir))
    test = arrays_for(spec, load_split(spec.dataset, "test", data_dir))
    if DATASETS[spec.dataset].get("validation"):
        return {"train": train, "val": arrays_for(spec, load_split(spec.dataset, DATASETS[spec.dataset]["validation"], data_dir)),
                "test": test}
    order = np.random.default_rng([seed, 12345]).permutation(len(train))
    n_val = int(round(val_fraction * len(train)))
    return {"train": train.subset(np.sort(order[n_val:])), "val": train.subset(np.sort(order[:n_val])), "test": test}


def augment_params(n: int, rng: np.random.Generator, max_shift: float = 2.0, max_rotate_deg: float = 10.0,
                   scale_range: tuple[float, float] = (0.9, 1.1)) -> np.ndarray:
    """Per-image (angle, scale, shift_y, shift_x), drawn for a whole global batch so every rank's slice
    gets exactly what a single process would."""
    return np.stack([np.deg2rad(rng.uniform(-max_rotate_deg, max_rotate_deg, n)), rng.uniform(*scale_range, n),
                     rng.uniform(-max_shift, max_shift, n), rng.uniform(-max_shift, max_shift, n)], axis=1)


def augment_images(images: np.ndarray, rng_or_params: np.random.Generator | np.ndarray) -> np.ndarray:
    """Random affine (rotation, scale, translation) per image with bilinear sampling, vectorised; uint8 in/out."""
    n, h, w, c = images.shape
    params = augment_params(n, rng_or_params) if isinstance(rng_or_params, np.random.Generator) else rng_or_params
    angle, scale, shift = params[:, 0], params[:, 1], params[:, 2:]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32) - cy, np.arange(w, dtype=np.float32) - cx, indexing="ij")
    cos, sin = (np.cos(angle) / scale)[:, None, None], (np.sin(angle) / scale)[:, None, None]
    # inverse map: output pixel -> source coordinate
    src_y = cos * (yy - shift[:, 0, None, None]) - sin * (xx - shift[:, 1, None, None]) + cy
    src_x = sin * (yy - shift[:, 0, None, None]) + cos * (xx - shift[:, 1, None, None]) + cx
    y0, x0 = np.floor(src_y).astype(np.int64), np.floor(src_x).astype(np.int64)
    fy, fx = (src_y - y0)[..., None], (src_x - x0)[..., None]
    padded = np.zeros((n, h + 2, w + 2, c), np.float32)
    padded[:, 1:-1, 1:-1] = images
    batch = np.arange(n)[:, None, None]

    def tap(y, x):
        return padded[batch, np.clip(y + 1, 0, h + 1), np.clip(x + 1, 0, w + 1)]

    out = (tap(y0, x0) * (1 - fy) * (1 - fx) + tap(y0, x0 + 1) * (1 - fy) * fx
           + tap(y0 + 1, x0) * fy * (1 - fx) + tap(y0 + 1, x0 + 1) * fy * fx)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def pad_width(seqs, multiple: int = PAD_MULTIPLE, max_len: int | None = None) -> int:
    """The longest sequence rounded up to a multiple of `multiple`, at most `max_len`."""
    width = -(-max(len(s) for s in seqs) // multiple) * multiple
    return min(width, max_len) if max_len is not None else width


def pad_tokens(seqs: np.ndarray, pad_id: int, multiple: int = PAD_MULTIPLE, max_len: int | None = None,
               width: int | None = None) -> np.ndarray:
    """Right-pad a batch to the next multiple of `multiple` (at most `max_len`): few shapes, few compilations.
    `width`: pad to this instead (a data-parallel rank pads its slice to the whole global batch's width)."""
    from ..text import pad

    return pad(seqs, pad_id, width=width or pad_width(seqs, multiple, max_len))


def epoch_order(n: int, seed: int, epoch: int, batch_size: int, lengths: np.ndarray | None = None) -> np.ndarray:
    """A seeded permutation; with `lengths`, examples are sorted by length inside windows of 50 batches
    and the batches shuffled again, so batches hold similar lengths (less padding) yet stay random."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if lengths is None:
        return order
    window = 50 * batch_size
    chunks = [c[np.argsort(lengths[c], kind="stable")] for c in np.array_split(order, max(1, -(-n // window)))]
    order = np.concatenate(chunks)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))])


def batches(data: ArraySet, spec: ModelSpec, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
            augment: bool = False, start_step: int = 0, rank: int = 0, world_size: int = 1,
            divisible_by: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Canonical (inputs, labels) batches of one epoch, from step `start_step` on (for resuming).
    With `world_size` > 1, each rank gets its contiguous, equal slice of every global batch, and text is
    padded to the global batch's width, so all ranks see the same shapes and together exactly the batches
    one process sees. `divisible_by` (default `world_size`): the epoch's last batch is cut to a multiple of
    it (see `global_batches`), so it too splits evenly over ranks, devices and micro-batches."""
    is_text = spec.preprocessing["kind"] == "text"
    lengths = np.fromiter((len(s) for s in data.inputs), np.int64, len(data)) if is_text else None
    order = epoch_order(len(data), seed, epoch, batch_size, lengths) if shuffle else np.arange(len(data))
    divisible_by = divisible_by or world_size
    if divisible_by % world_size:
        raise ValueError(f"divisible_by={divisible_by} must be a multiple of world_size={world_size}")
    for step, (global_index, drawn) in enumerate(global_batches(order, batch_size, divisible_by)):
        if step < start_step:
            continue
        share = len(global_index) // world_size  # equal slices: DDP and sharding average them unweighted
        mine = np.arange(rank * share, (rank + 1) * share)
        index = global_index[mine]
        labels = data.labels[index]
        if is_text:
            p = spec.preprocessing
            width = pad_width(data.inputs[global_index], max_len=p["max_len"])
            yield pad_tokens(data.inputs[index], p["pad_id"], width=width), labels
        else:
            images = data.inputs[index]
            if augment:  # drawn for the whole batch before any cut: an example's augmentation never depends on the cut
                params = augment_params(drawn, np.random.default_rng([seed, epoch, step]))
                images = augment_images(images, params[mine])
            yield normalise(images, spec.preprocessing), labels


def global_batches(order: np.ndarray, batch_size: int, divisible_by: int = 1) -> Iterator[tuple[np.ndarray, int]]:
    """The epoch's global batches as (indices, size before any cut). The last batch, when its size is not a
    multiple of `divisible_by`, loses its last few examples (fewer than `divisible_by`; a batch left empty is
    dropped): cut deterministically, never split unequally. With `divisible_by=1` nothing is cut."""
    for begin in range(0, len(order), batch_size):
        index = order[begin : begin + batch_size]
        drawn = len(index)
        index = index[: len(index) - len(index) % divisible_by]
        if len(index):
            yield index, drawn


def steps_per_epoch(n: int, batch_size: int, divisible_by: int = 1) -> int:
    """The number of batches `global_batches` gives for `n` examples."""
    full, rest = divmod(n, batch_size)
    return full + (rest >= divisible_by)
