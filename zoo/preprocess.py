"""Preprocessing from a model's spec, in NumPy, shared by both backends (same inputs => same arrays)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _to_array(item: Any) -> np.ndarray:
    if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image, without importing PIL
        return np.asarray(item.convert("L"))
    return np.asarray(item)


def image_batch(inputs: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """uint8 images of shape (H, W), (N, H, W) or (N, H, W, C), or PIL images (one or a list)
    -> normalised float32 (N, H, W, C), the canonical image batch."""
    h, w, c = preprocessing["height"], preprocessing["width"], preprocessing["channels"]
    if isinstance(inputs, (list, tuple)):
        arrays = [_to_array(item) for item in inputs]
        if not arrays:
            raise ValueError("no images given")
        x = np.stack(arrays)  # (H, W) items -> (N, H, W); (H, W, C) items -> (N, H, W, C)
    else:
        x = _to_array(inputs)
    if x.dtype != np.uint8:
        raise TypeError(f"images must be uint8 in 0..255 (got dtype {x.dtype}); preprocessing is applied for you")
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (h, w, c):
        raise ValueError(f"images must have shape (H, W), (N, H, W) or (N, H, W, C) with H, W, C = {h}, {w}, {c}; got {x.shape}")
    mean = np.asarray(preprocessing["mean"], np.float32)
    std = np.asarray(preprocessing["std"], np.float32)
    return ((x.astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)


def text_batch(inputs: Any, spec) -> np.ndarray:
    """A string or a list of strings -> right-padded token ids (N, T), T <= max_len."""
    from .text import encode, pad

    if spec.tokenizer_json is None:
        raise ValueError(f"{spec.name}: no tokenizer attached; load pretrained weights or a checkpoint that carries one")
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("text models take a string or a list of strings")
    return pad(encode(texts, spec.tokenizer_json, spec.preprocessing), spec.preprocessing["pad_id"])
