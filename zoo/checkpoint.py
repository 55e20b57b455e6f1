"""The one checkpoint format: a `.safetensors` file holding the PyTorch `state_dict` names and layouts
(float32 parameters, int64 `num_batches_tracked`) plus string metadata describing the model.

Only NumPy and safetensors are used here, so reading a checkpoint never imports a framework and never
unpickles anything. Every failure raises `CheckpointError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "zoo.safetensors/1"
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
JSON_FIELDS = ("config", "preprocessing", "labels")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


@dataclass
class Checkpoint:
    path: str
    tensors: dict[str, np.ndarray]
    arch: str
    model: str
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    labels: list[str]
    tokenizer_json: str | None
    metadata: dict[str, str]


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_metadata(spec, written_by: str) -> dict[str, str]:
    from ._version import __version__

    meta = {
        "format": FORMAT,
        "zoo_version": __version__,
        "written_by": written_by,
        "model": spec.name,
        "arch": spec.arch,
        "config": json.dumps(spec.config, sort_keys=True),
        "preprocessing": json.dumps(spec.preprocessing, sort_keys=True),
        "labels": json.dumps(list(spec.labels)),
        "task": spec.task,
        "dataset": spec.dataset,
        "classifier": spec.classifier,
    }
    if spec.finetuned_from:
        meta["finetuned_from"] = spec.finetuned_from
    meta.update(spec.provenance or {})
    if spec.tokenizer_json:
        meta["tokenizer"] = spec.tokenizer_json
    return meta


PROVENANCE_KEYS = ("source", "source_weights", "source_url", "license", "recipe", "reported_metrics")  # `zoo import`'s record


def write_checkpoint(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Path:
    """Write atomically: a temporary file in the same folder, fsync, then rename over `path`."""
    from safetensors.numpy import save_file

    from .atomic import atomic_path

    arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}  # keeps 0-d arrays 0-d
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=metadata)
    return Path(path)


def _check_header(path: str, size: int) -> None:
    """Sizes, offsets and JSON of the header, checked before safetensors maps the file, for clear errors."""
    if size < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes, shorter than the 8-byte header length)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{path}: not a safetensors file or corrupt: header length {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit"
            )
        if 8 + n > size:
            raise CheckpointError(f"{path}: truncated: the header claims {n} bytes but the file has only {size - 8} after the length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a safetensors file: its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file: its header is not a JSON object")
    data_bytes = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: corrupt header: tensor {key!r} has no valid data_offsets") from None
        if not (0 <= start <= end <= data_bytes):
            raise CheckpointError(
                f"{path}: truncated or corrupt: tensor {key!r} claims bytes {start}..{end} but the data section has {data_bytes} bytes"
            )


def read_checkpoint(path: str | os.PathLike, allow_nonfinite: bool = False) -> Checkpoint:
    """Read and validate a zoo checkpoint. Non-finite weights are refused unless `allow_nonfinite`:
    a NaN or Inf weight silently turns every prediction into garbage, so it is an error, not a warning."""
    from safetensors import SafetensorError, safe_open

    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    _check_header(path, os.path.getsize(path))
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, TypeError, OSError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file: {e}") from None

    fields = parse_metadata(metadata, path)
    if not allow_nonfinite:
        for key, value in tensors.items():
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                bad = int((~np.isfinite(value)).sum())
                raise CheckpointError(f"{path}: tensor {key!r} holds {bad} NaN/Inf values; refusing to load it")
    return Checkpoint(path=path, tensors=tensors, metadata=metadata, **fields)


def parse_metadata(metadata: dict[str, str], path: str) -> dict[str, Any]:
    """Validate a zoo checkpoint's string metadata; returns the Checkpoint fields it describes."""
    if metadata.get("format") != FORMAT:
        found = metadata.get("format")
        raise CheckpointError(
            f"{path}: not a zoo checkpoint: metadata key 'format' is {found!r}, expected {FORMAT!r}"
        )
    for key in ("arch",) + JSON_FIELDS:
        if key not in metadata:
            raise CheckpointError(f"{path}: metadata key {key!r} is missing")
    parsed = {}
    for key in JSON_FIELDS:
        try:
            parsed[key] = json.loads(metadata[key])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: metadata key {key!r} is not valid JSON ({e})") from None
    if not isinstance(parsed["config"], dict):
        raise CheckpointError(f"{path}: metadata key 'config' must be a JSON object")
    return {"arch": metadata["arch"], "model": metadata.get("model", ""), "config": parsed["config"],
            "preprocessing": parsed["preprocessing"], "labels": parsed["labels"], "tokenizer_json": metadata.get("tokenizer")}


def check_tensors(expected: dict[str, tuple[tuple[int, ...], np.dtype]], given: dict[str, Any], source: str) -> None:
    """Strict comparison of a state dict against the key set, shapes and dtypes a model expects.
    One error lists every missing, unexpected, mis-shaped and mis-typed key."""
    problems = []
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    for key in sorted(set(expected) & set(given)):
        shape, dtype = expected[key]
        value = given[key]
        got_shape = tuple(value.shape)
        got_dtype = np.dtype(str(value.dtype).replace("torch.", ""))
        if got_shape != tuple(shape):
            problems.append(f"{key}: shape {got_shape}, expected {tuple(shape)}")
        elif got_dtype != np.dtype(dtype):
            problems.append(f"{key}: dtype {got_dtype}, expected {np.dtype(dtype)}")
    if problems:
        raise CheckpointError(f"{source}: state dict does not match the model: " + "; ".join(problems))
