"""Preprocessing from a model's spec, in NumPy, shared by both backends (same inputs => same arrays)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _is_pil(item: Any) -> bool:
    return hasattr(item, "convert") and hasattr(item, "size")  # a PIL image, without importing PIL


def _keeps_colour(preprocessing: dict[str, Any]) -> bool:
    adapt = preprocessing.get("adapt")
    return bool(adapt and adapt.get("colour")) or preprocessing["channels"] == 3


def _to_array(item: Any, keep_colour: bool) -> np.ndarray:
    if _is_pil(item):
        return np.asarray(item.convert("RGB" if keep_colour and item.mode not in ("L", "1", "I", "F") else "L"))
    return np.asarray(item)


def is_single_image(inputs: Any, preprocessing: dict[str, Any]) -> bool:
    """True where `image_batch` reads `inputs` as one image: a PIL image, an (H, W) array, or an (H, W, 3)
    array where colour is expected. Anything else is a collection of images (an (N, H, W[, C]) array, a list...)."""
    if _is_pil(inputs):
        return True
    ndim = getattr(inputs, "ndim", None)  # NumPy, torch and JAX arrays alike
    if ndim is None:
        return False
    return ndim < 3 or (ndim == 3 and _keeps_colour(preprocessing) and inputs.shape[-1] == 3)


def image_batch(inputs: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """uint8 images of shape (H, W), (N, H, W) or (N, H, W, C), or PIL images (one or a list)
    -> normalised float32 (N, H, W, C), the canonical image batch. A model whose preprocessing records an
    `adapt` rule (zoo.adapt: e.g. USPS digits framed like MNIST) takes other sizes and colours through it."""
    h, w, c = preprocessing["height"], preprocessing["width"], preprocessing["channels"]
    adapt = preprocessing.get("adapt")
    keep_colour = _keeps_colour(preprocessing)
    if isinstance(inputs, (list, tuple)):
        arrays = [_to_array(item, keep_colour) for item in inputs]
        if not arrays:
            raise ValueError("no images given")
        x = np.stack(arrays)  # (H, W) items -> (N, H, W); (H, W, C) items -> (N, H, W, C)
    else:
        x = _to_array(inputs, keep_colour)
    if x.dtype != np.uint8:
        raise TypeError(f"images must be uint8 in 0..255 (got dtype {x.dtype}); preprocessing is applied for you")
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:  # (N, H, W) greyscale, or one (H, W, 3) colour image where colour is expected
        x = x[None] if keep_colour and x.shape[-1] == 3 else x[..., None]
    if adapt and x.ndim == 4:
        from .adapt import adapt_images

        x = adapt_images(x, adapt, preprocessing)
    if x.ndim != 4 or x.shape[1:] != (h, w, c):
        raise ValueError(f"images must have shape (H, W), (N, H, W) or (N, H, W, C) with H, W, C = {h}, {w}, {c}; got {x.shape}")
    return normalise(x, preprocessing)


def normalise(images: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (x / 255 - mean) / std: the one normalisation, for training and inference."""
    mean = np.asarray(preprocessing["mean"], np.float32)
    std = np.asarray(preprocessing["std"], np.float32)
    return ((images.astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)


def text_batch(inputs: Any, spec) -> np.ndarray:
    """A string or a list of strings -> right-padded token ids (N, T), T <= max_len."""
    from .text import pad

    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    return pad(text_ids(texts, spec), spec.preprocessing["pad_id"])


def text_ids(texts: list[str], spec) -> list[list[int]]:
    """Strings -> token ids per string, truncated by the spec's rule (unpadded)."""
    from .text import encode

    if spec.tokenizer_json is None:
        raise ValueError(f"{spec.name}: no tokenizer attached; load pretrained weights or a checkpoint that carries one")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("text models take a string or a list of strings")
    return encode(texts, spec.tokenizer_json, spec.preprocessing)
