"""Fine-tuning data from a user's source: a local folder of `<split>.parquet` files, an ImageFolder tree, a CSV or
JSON-lines file, or a Hugging Face dataset id. Everything is read with `datasets` (images are decoded with PIL)
and returned as `zoo.data.Split`s: uint8 (N, H, W, C) images at their native size, or raw strings, with int64
labels that index `label_names`.

Problems are errors that name the file (or source and split), the row and the column, never silent skips.

Splits: the source's own validation split when it has one ("validation", "valid", "val" or "dev"), else a
seeded hold-out of train, stratified by label, taken before any subsampling (`max_per_class`,
`max_examples`), so the validation set does not change when the training subsample does."""

from __future__ import annotations

import functools
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import Split

VALIDATION_NAMES = ("validation", "valid", "val", "dev")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt", ".zip", ".tar", ".gz")


@dataclass
class SourceData:
    train: Split
    val: Split
    test: Split | None
    label_names: list[str]
    description: str
    unk_rate: float | None = None  # text sources: filled by the caller with `zoo.adapt.unk_rate` for the base model's tokenizer


class _Raw:
    """One split as `datasets` gives it (loaded when first used), with a name for error messages (the file, or the
    Hub id and split)."""

    def __init__(self, split: str, ds: Any, origin: str):
        self.split, self.origin = split, origin
        self._ds = ds  # a datasets.Dataset, or a function that loads it

    @property
    def ds(self):
        if callable(self._ds):
            self._ds = self._ds()
        return self._ds


# ---------------------------------------------------------------------------------------------- reading


def _load(builder: str, path: Path, what: str, **kwargs):
    from datasets import load_dataset

    try:
        return load_dataset(builder, **kwargs)
    except Exception as e:  # datasets raises many types (ArrowInvalid, DatasetGenerationError, ...); name the file
        raise ValueError(f"{path}: cannot read it as {what}: {type(e).__name__}: {e}") from e


def _load_parquet(file: Path):
    import pyarrow.parquet as pq

    if pq.ParquetFile(file).metadata.num_rows == 0:  # `datasets` cannot even read an empty Parquet file
        raise ValueError(f"{file}: split {file.stem!r} is empty (0 rows)")
    return _load("parquet", file, "Parquet", data_files={"train": str(file)}, split="train")


def _read_parquet_dir(path: Path) -> tuple[str, dict[str, _Raw]]:
    out = {}
    for file in sorted(path.glob("*.parquet")):
        # each file as split "train" of its own load: split names such as "all" are reserved in `datasets`
        out[file.stem] = _Raw(file.stem, functools.partial(_load_parquet, file), str(file))
    return f"Parquet folder {path}", out


def _read_imagefolder(path: Path) -> tuple[str, dict[str, _Raw]]:
    # `datasets` finds train/ validation/ test/ folders itself (valid/val/dev become "validation", eval "test")
    d = _load("imagefolder", path, "an ImageFolder tree", data_dir=str(path))
    return f"ImageFolder {path}", {name: _Raw(name, ds, f"{path} (split {name!r})") for name, ds in d.items()}


def _read_file(path: Path) -> tuple[str, dict[str, _Raw]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        builder, what = "csv", "CSV"
    elif suffix in (".jsonl", ".json"):
        builder, what = "json", "JSON lines"
    elif suffix == ".parquet":
        builder, what = "parquet", "Parquet"
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .jsonl/.json, .parquet, a folder or a Hub dataset id")
    if builder in ("csv", "json") and _data_lines(path, 2) <= (builder == "csv"):  # `datasets` fails obscurely on these
        raise ValueError(f"{path}: split 'train' is empty (no data rows)")
    ds = _load(builder, path, what, data_files={"train": str(path)}, split="train")
    return f"{what} file {path}", {"train": _Raw("train", ds, str(path))}


def _data_lines(path: Path, most: int) -> int:
    """How many non-blank lines `path` starts with, counting up to `most`."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            n += bool(line.strip())
            if n >= most:
                break
    return n


def _read_hub(source: str) -> tuple[str, dict[str, _Raw]]:
    from datasets import load_dataset

    try:
        d = load_dataset(source)
    except Exception as e:
        raise ValueError(
            f"{source!r} is not a local file or folder, and loading it as a Hugging Face dataset id failed "
            f"({type(e).__name__}: {e})"
        ) from e
    return f"Hugging Face dataset {source}", {name: _Raw(name, ds, f"{source} (split {name!r})") for name, ds in d.items()}


def _read_source(source: str | os.PathLike) -> tuple[str, dict[str, _Raw]]:
    path = Path(source).expanduser()
    if path.is_dir():
        if any(path.glob("*.parquet")):
            return _read_parquet_dir(path)
        if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            return _read_imagefolder(path)
        raise ValueError(f"{path}: a folder must hold <split>.parquet files or an ImageFolder tree (one sub-folder per class)")
    if path.is_file():
        return _read_file(path)
    text = str(source)
    if not _HUB_ID.match(text) or text.lower().endswith(_FILE_SUFFIXES):
        raise FileNotFoundError(f"{text}: no such file or folder (and it is not a Hugging Face dataset id such as 'owner/name')")
    return _read_hub(text)


# ---------------------------------------------------------------------------------------------- columns


def _is_image(feature) -> bool:
    from datasets import Image

    return isinstance(feature, Image) or (isinstance(feature, dict) and set(feature) == {"bytes", "path"})


def _is_string(feature) -> bool:
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _pick(raw: _Raw, wanted: str | None, default: str, test, what: str, exclude: str) -> str:
    columns = list(raw.ds.features)
    available = ", ".join(f"{c} ({_type_name(raw.ds.features[c])})" for c in columns)
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{raw.origin}: no {what} column {wanted!r}; available columns: {available}")
        name = wanted
    elif default in columns:
        name = default
    else:
        found = [c for c in columns if c != exclude and test(raw.ds.features[c])]
        if len(found) != 1:
            how = "none" if not found else f"several ({', '.join(found)})"
            raise ValueError(f"{raw.origin}: no {what} column {default!r} and {how} of that type; "
                             f"pass the {what} column by name. Available columns: {available}")
        name = found[0]
    if not test(raw.ds.features[name]):
        raise ValueError(f"{raw.origin}: column {name!r} is {_type_name(raw.ds.features[name])}, not {what} data; "
                         f"available columns: {available}")
    return name


def _type_name(feature) -> str:
    from datasets import ClassLabel, Image, Value

    if isinstance(feature, Image):
        return "Image"
    if isinstance(feature, ClassLabel):
        return "ClassLabel"
    if isinstance(feature, Value):
        return feature.dtype
    return type(feature).__name__


# ---------------------------------------------------------------------------------------------- labels


def _row_file(raw: _Raw, row: int, image_column: str | None) -> str:
    """Where a row lives: for ImageFolder rows, the image's own path."""
    if image_column is not None and _is_image(raw.ds.features[image_column]):
        cell = raw.ds.cast_column(image_column, _undecoded())[int(row)][image_column]
        if cell and cell.get("path") and not cell.get("bytes"):
            return f"{raw.origin}, row {row} ({cell['path']})"
    return f"{raw.origin}, row {row}"


def _undecoded():
    from datasets import Image

    return Image(decode=False)


def _raw_labels(raw: _Raw, column: str, image_column: str | None) -> tuple[str, np.ndarray, list[str] | None]:
    """('names', per-row names, class names | None) or ('ints', per-row ints, None), with missing/invalid values as errors."""
    from datasets import ClassLabel, Value

    feature = raw.ds.features[column]
    values = raw.ds.data.column(column).to_numpy(zero_copy_only=False)
    if isinstance(feature, ClassLabel):
        values = values.astype(np.int64)
        bad = np.flatnonzero((values < 0) | (values >= feature.num_classes))
        if len(bad):
            r = bad[0]
            raise ValueError(f"{_row_file(raw, r, image_column)}: label {values[r]} is outside the {feature.num_classes} "
                             f"class names of column {column!r} ({', '.join(feature.names)})")
        return "names", np.asarray(feature.names, dtype=object)[values], list(feature.names)
    if _is_string(feature):
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise ValueError(f"{_row_file(raw, missing[0], image_column)}: label column {column!r} is empty")
        return "names", values.astype(object), None
    if isinstance(feature, Value) and (feature.dtype.startswith("int") or feature.dtype.startswith("uint")):
        values = values.astype(np.int64)
        bad = np.flatnonzero(values < 0)
        if len(bad):
            raise ValueError(f"{_row_file(raw, bad[0], image_column)}: label {values[bad[0]]} in column {column!r} is negative")
        return "ints", values, None
    if isinstance(feature, Value) and feature.dtype.startswith("float"):  # CSV turns an int column with gaps into floats
        values = values.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0))
        if len(bad):
            v = values[bad[0]]
            why = "is empty" if np.isnan(v) else f"has value {v!r}, not a class index"
            raise ValueError(f"{_row_file(raw, bad[0], image_column)}: label column {column!r} {why}")
        return "ints", values.astype(np.int64), None
    raise ValueError(f"{raw.origin}: label column {column!r} is {_type_name(feature)}; use integer class indices, "
                     f"strings or a ClassLabel")


def _encode_labels(raws: dict[str, _Raw], label_column: str, image_column: str | None,
                   labels: list[str] | None) -> tuple[dict[str, np.ndarray], list[str]]:
    found = {k: _raw_labels(r, label_column, image_column) for k, r in raws.items()}
    kinds = {kind for kind, _, _ in found.values()}
    if len(kinds) > 1:
        raise ValueError(f"label column {label_column!r} holds class names in some splits and integers in others: "
                         + ", ".join(f"{raws[k].origin}: {kind}" for k, (kind, _, _) in found.items()))
    if kinds == {"ints"}:
        top = max(int(v.max()) for _, v, _ in found.values())
        names = list(labels) if labels is not None else [str(i) for i in range(top + 1)]
        for k, (_, values, _) in found.items():
            bad = np.flatnonzero(values >= len(names))
            if len(bad):
                r = bad[0]
                raise ValueError(f"{_row_file(raws[k], r, image_column)}: label {values[r]} is outside the model's "
                                 f"{len(names)} labels ({', '.join(names)})")
        return {k: v for k, (_, v, _) in found.items()}, names
    if labels is not None:
        names = list(labels)
    else:
        class_names = [n for _, _, n in found.values() if n is not None]
        train_key = next(iter(raws))
        names = found[train_key][2] or (class_names[0] if class_names else None)
        if names is None:
            names = sorted({str(v) for _, values, _ in found.values() for v in values})
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for k, (_, values, _) in found.items():
        uniq, inverse = np.unique(values.astype(str), return_inverse=True)
        table = np.array([index.get(u, -1) for u in uniq], dtype=np.int64)
        codes = table[inverse.reshape(-1)]
        bad = np.flatnonzero(codes < 0)
        if len(bad):
            r = bad[0]
            known = "the model's labels" if labels is not None else "the class names"
            raise ValueError(f"{_row_file(raws[k], r, image_column)}: label {values[r]!r} is not one of {known} "
                             f"({', '.join(names)})")
        out[k] = codes
    return out, names


# ---------------------------------------------------------------------------------------------- selection


def _allocate(counts: np.ndarray, total: int, at_least_one: bool, priority: np.ndarray) -> np.ndarray:
    """Split `total` over classes in proportion to `counts` (largest remainders, ties to the lower `priority`),
    never above a class's count; with `at_least_one`, every non-empty class gets one when `total` allows."""
    counts = np.asarray(counts, np.int64)
    if total >= counts.sum():
        return counts.copy()
    exact = total * counts / counts.sum()
    out = np.floor(exact).astype(np.int64)
    order = np.lexsort((priority, -(exact - out)))
    out[order[: total - out.sum()]] += 1
    if at_least_one and total >= np.count_nonzero(counts):
        for c in np.flatnonzero((out == 0) & (counts > 0)):
            out[int(np.argmax(out))] -= 1
            out[c] = 1
    return out


def _by_class(labels: np.ndarray, index: np.ndarray, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """`index` grouped by label, each group in the order of one seeded permutation of `index`, and each group's first
    position in it (to break ties). Only which rows share a label matters, not the label values or their order."""
    shuffled = rng.permutation(index)
    labels_in_order = labels[shuffled]
    groups = [shuffled[labels_in_order == c] for c in np.unique(labels_in_order)]
    first = np.array([np.flatnonzero(labels_in_order == c)[0] for c in np.unique(labels_in_order)])
    return groups, first


def holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows), both sorted: `round(fraction * N)` rows held out, stratified by label."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {fraction}")
    groups, first = _by_class(labels, np.arange(len(labels)), np.random.default_rng([seed, 1]))
    n_val = int(np.floor(fraction * len(labels) + 0.5))
    take = _allocate(np.array([len(g) for g in groups]), n_val, at_least_one=False, priority=first)
    val = np.concatenate([g[:t] for g, t in zip(groups, take, strict=True)])
    train = np.concatenate([g[t:] for g, t in zip(groups, take, strict=True)])
    return np.sort(train), np.sort(val)


def subsample(labels: np.ndarray, index: np.ndarray, seed: int, max_per_class: int | None = None,
              max_examples: int | None = None) -> np.ndarray:
    """A seeded subsample of `index` (sorted): at most `max_per_class` of each class, then at most `max_examples`
    in all, shared in proportion to the classes (each class at least one when possible). Smaller limits give
    subsets of larger ones."""
    for name, value in (("max_per_class", max_per_class), ("max_examples", max_examples)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    groups, first = _by_class(labels, index, np.random.default_rng([seed, 2]))
    quota = np.array([len(g) if max_per_class is None else min(len(g), max_per_class) for g in groups], np.int64)
    if max_examples is not None:
        quota = _allocate(quota, max_examples, at_least_one=True, priority=first)
    return np.sort(np.concatenate([g[:q] for g, q in zip(groups, quota, strict=True)]))


# ---------------------------------------------------------------------------------------------- inputs


def _to_array(im, where: str) -> np.ndarray:
    """A PIL image as uint8 (H, W, 1) for greyscale or (H, W, 3) for colour; transparency is composited on white."""
    from PIL import Image

    mode = im.mode
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))[..., None]
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba)
        return np.asarray(flat.convert("L"))[..., None] if mode in ("LA", "La") else np.asarray(flat.convert("RGB"))
    if mode in ("RGB", "P", "CMYK", "YCbCr"):
        return np.asarray(im.convert("RGB"))
    raise ValueError(f"{where}: image mode {mode!r} is not supported (use 8-bit greyscale or colour images)")


def _decode_images(raw: _Raw, column: str, rows: np.ndarray) -> list[np.ndarray]:
    from PIL import Image

    cells = raw.ds.cast_column(column, _undecoded()).select(rows)[column]
    out = []
    for row, cell in zip(rows, cells, strict=True):
        file = cell.get("path") if cell else None
        where = f"{raw.origin}, row {row}" + (f" ({file})" if file and not (cell and cell.get("bytes")) else "")
        if not cell or (cell.get("bytes") is None and not file):
            raise ValueError(f"{where}: image column {column!r} is empty")
        try:
            im = Image.open(io.BytesIO(cell["bytes"])) if cell.get("bytes") is not None else Image.open(file)
            im.load()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
            raise ValueError(f"{where}: cannot decode image in column {column!r}: {type(e).__name__}: {e}") from e
        out.append(_to_array(im, where))
    return out


def _stack(raw: _Raw, arrays: list[np.ndarray], rows: np.ndarray, channels: int) -> np.ndarray:
    if not arrays:
        return np.zeros((0, 0, 0, channels), np.uint8)
    h, w = arrays[0].shape[:2]
    for row, a in zip(rows, arrays, strict=True):
        if a.shape[:2] != (h, w):
            raise ValueError(f"{raw.origin}, row {row}: image is {a.shape[0]}x{a.shape[1]} (height x width) but row {rows[0]} "
                             f"is {h}x{w}; all images of a split must have one size (resize them with zoo.adapt)")
    return np.stack([np.repeat(a, channels // a.shape[2], axis=2) for a in arrays]).astype(np.uint8)


def _texts(raw: _Raw, column: str) -> list[str]:
    values = raw.ds.data.column(column).to_pylist()
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise ValueError(f"{raw.origin}, row {missing[0]}: text column {column!r} is empty (None)")
    return values


# ---------------------------------------------------------------------------------------------- entry point


def load_source(source: str | os.PathLike, *, kind: str, text_column: str | None = None, image_column: str | None = None,
                label_column: str = "label", train_split: str = "train", validation_split: str | None = None,
                test_split: str | None = "test", val_fraction: float = 0.1, seed: int = 0, max_per_class: int | None = None,
                max_examples: int | None = None, labels: list[str] | None = None) -> SourceData:
    """Read a fine-tuning source (see the module docstring) into train / val / test `Split`s.

    `kind` is "image" or "text". `labels` (the model's label list) fixes the label order; without it the names
    come from the data (ClassLabel names, ImageFolder folder names, sorted label strings, or "0".."K-1").
    `validation_split=None` uses the source's own validation split if it has one, else holds out `val_fraction`
    of train (stratified, seeded by `seed`); `max_per_class` / `max_examples` then subsample the rest of train."""
    if kind not in ("image", "text"):
        raise ValueError(f"kind must be 'image' or 'text', got {kind!r}")
    what, found = _read_source(source)
    name = Path(str(source)).stem if Path(str(source)).expanduser().exists() else str(source)

    def get(split: str, role: str) -> _Raw:
        if split in found:
            return found[split]
        if split in VALIDATION_NAMES and "validation" in found:  # ImageFolder renames valid/val/dev to "validation"
            return found["validation"]
        raise ValueError(f"{what}: no {role} split {split!r}; it has: {', '.join(found) or 'none'}")

    raws = {"train": get(train_split, "train")}
    if validation_split is not None:
        raws["val"] = get(validation_split, "validation")
    else:
        own = next((n for n in VALIDATION_NAMES if n in found), None)
        if own is not None:
            raws["val"] = found[own]
    if test_split is not None and test_split in found:
        raws["test"] = found[test_split]
    for raw in raws.values():
        if len(raw.ds) == 0:
            raise ValueError(f"{raw.origin}: split {raw.split!r} is empty (0 rows)")

    train_raw = raws["train"]
    if kind == "image":
        col = _pick(train_raw, image_column, "image", _is_image, "image", label_column)
    else:
        col = _pick(train_raw, text_column, "text", _is_string, "text", label_column)
    for raw in raws.values():
        _pick(raw, col, col, _is_image if kind == "image" else _is_string, kind, label_column)
        if label_column not in raw.ds.features:
            cols = ", ".join(f"{c} ({_type_name(f)})" for c, f in raw.ds.features.items())
            raise ValueError(f"{raw.origin}: no label column {label_column!r}; available columns: {cols}")
    codes, names = _encode_labels(raws, label_column, col if kind == "image" else None, labels)

    # rows of each split: validation held out of the full train split first, then the train subsample
    rows = {role: np.arange(len(raw.ds)) for role, raw in raws.items()}
    if "val" in raws:
        val_note = f"its own split {raws['val'].split!r}"
        val_raw = raws["val"]
    else:
        rows["train"], rows["val"] = holdout(codes["train"], val_fraction, seed)
        codes["val"] = codes["train"]
        val_raw = train_raw
        val_note = f"held out of train ({val_fraction:g}, stratified, seed {seed})"
    n_before = len(rows["train"])
    if max_per_class is not None or max_examples is not None:
        rows["train"] = subsample(codes["train"], rows["train"], seed, max_per_class, max_examples)
    for role in ("train", "val"):
        if len(rows[role]) == 0:
            raise ValueError(f"{train_raw.origin if role == 'train' else val_raw.origin}: the {role} split is empty "
                             f"after holding out validation rows (val_fraction={val_fraction}, {len(train_raw.ds)} rows)")
    sources = {"train": train_raw, "val": val_raw, **({"test": raws["test"]} if "test" in raws else {})}

    inputs: dict[str, Any] = {}
    if kind == "text":
        texts = {id(raw): _texts(raw, col) for raw in sources.values()}
        inputs = {role: [texts[id(raw)][i] for i in rows[role]] for role, raw in sources.items()}
    else:
        decoded = {role: _decode_images(raw, col, rows[role]) for role, raw in sources.items()}
        channels = max(a.shape[2] for arrays in decoded.values() for a in arrays)  # any colour image makes the source colour
        inputs = {role: _stack(sources[role], decoded[role], rows[role], channels) for role in sources}

    split_names = {"train": train_raw.split, "val": val_raw.split if "val" in raws else f"{train_raw.split} (held out)",
                   "test": raws["test"].split if "test" in raws else None}
    splits = {role: Split(name, split_names[role], inputs[role], codes[role][rows[role]]) for role in sources}

    limits = ", ".join(f"{k}={v}" for k, v in (("max_per_class", max_per_class), ("max_examples", max_examples)) if v is not None)
    parts = [f"train {len(splits['train'])}" + (f" (subsampled from {n_before}: {limits}, seed {seed})" if limits else ""),
             f"validation {len(splits['val'])} ({val_note})",
             f"test {len(splits['test'])}" if "test" in splits else "no test split"]
    shape = ""
    if kind == "image":
        _, h, w, c = splits["train"].inputs.shape
        shape = f"; images {h}x{w}x{c}"
    description = f"{what}, {kind} column {col!r}, label column {label_column!r}: {'; '.join(parts)}; " \
                  f"{len(names)} labels ({', '.join(names)}){shape}"
    return SourceData(splits["train"], splits["val"], splits.get("test"), names, description)
