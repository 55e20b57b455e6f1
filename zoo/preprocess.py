"""Preprocessing from a model's spec, in NumPy, shared by both backends (same inputs => same arrays).

Two kinds of image models: fixed-size ones (MNIST, USPS: uint8 arrays of exactly the model's size, or through an
`adapt` rule), and photo classifiers whose preprocessing records `resize_size` (torchvision's ImageNet models):
any photo is converted by the recorded `mode` (PIL's `.convert("RGB")`), its shorter side resized to `resize_size`
with the recorded `interpolation` (PIL, antialiased), centre-cropped to `height` x `width` and normalised, with
torchvision's size arithmetic (`photo`), so the result equals `weights.transforms()` on the same PIL image."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

# torchvision's InterpolationMode values -> PIL's resampling filters (torchvision.transforms.functional.pil_modes_mapping)
INTERPOLATIONS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def _is_pil(item: Any) -> bool:
    return hasattr(item, "convert") and hasattr(item, "size")  # a PIL image, without importing PIL


def _is_file(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike)) or hasattr(item, "read")  # an image file's path, or an open binary file


def open_image(path: Any):
    """The image file at `path` (or an open binary file) as a loaded PIL image, as torchvision's loader reads it
    (no EXIF rotation)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image file") from None
    except OSError as e:  # PIL.UnidentifiedImageError and truncated files
        raise ValueError(f"{path}: not a readable image ({e})") from None


def _keeps_colour(preprocessing: dict[str, Any]) -> bool:
    adapt = preprocessing.get("adapt")
    return bool(adapt and adapt.get("colour")) or preprocessing["channels"] == 3


def _to_array(item: Any, keep_colour: bool) -> np.ndarray:
    if _is_file(item):
        item = open_image(item)
    if _is_pil(item):
        return np.asarray(item.convert("RGB" if keep_colour and item.mode not in ("L", "1", "I", "F") else "L"))
    return np.asarray(item)


def is_single_image(inputs: Any, preprocessing: dict[str, Any]) -> bool:
    """True where `image_batch` reads `inputs` as one image: a PIL image, an image file (path or open file), an (H, W) array, or
    an (H, W, 3) array where colour is expected ((H, W, 1), (H, W, 3) or (H, W, 4) for photo classifiers). Anything
    else is a collection of images (an (N, H, W[, C]) array, a list...)."""
    if _is_pil(inputs) or _is_file(inputs):
        return True
    ndim = getattr(inputs, "ndim", None)  # NumPy, torch and JAX arrays alike
    if ndim is None:
        return False
    if "resize_size" in preprocessing:
        return ndim == 2 or (ndim == 3 and inputs.shape[-1] in (1, 3, 4))
    return ndim < 3 or (ndim == 3 and _keeps_colour(preprocessing) and inputs.shape[-1] == 3)


def image_batch(inputs: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """uint8 images of shape (H, W), (N, H, W) or (N, H, W, C), or PIL images (one or a list)
    -> normalised float32 (N, H, W, C), the canonical image batch. A model whose preprocessing records an
    `adapt` rule (zoo.adapt: e.g. USPS digits framed like MNIST) takes other sizes and colours through it.
    A photo classifier (`resize_size` in its preprocessing) takes photos of any size: see `photo`."""
    if "resize_size" in preprocessing:
        items = [inputs] if is_single_image(inputs, preprocessing) else list(inputs)
        if not items:
            raise ValueError("no images given")
        return normalise(np.stack([photo(item, preprocessing) for item in items]), preprocessing)
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


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to `size`, keeping the aspect ratio: torchvision's
    `_compute_resized_output_size` for one int, the longer side truncated (not rounded)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def centre_crop_offsets(height: int, width: int, crop_height: int, crop_width: int) -> tuple[int, int]:
    """(top, left) of torchvision's `center_crop` box: Python's round, which rounds halves to even."""
    if crop_height > height or crop_width > width:
        raise ValueError(f"cannot centre-crop {crop_height}x{crop_width} from an image resized to {height}x{width}: "
                         "the preprocessing's resize_size is smaller than its crop")
    return int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))


def to_pil(item: Any):
    """A PIL image from a PIL image, an image file (path or open file), or a uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."""
    if _is_file(item):
        return open_image(item)
    if _is_pil(item):
        return item
    from PIL import Image

    array = np.asarray(item)
    if array.dtype != np.uint8:
        raise TypeError(f"images must be uint8 in 0..255 (got dtype {array.dtype}); preprocessing is applied for you")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"an image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB", (H, W, 4) -> "RGBA"


def photo(item: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """One photo -> uint8 (height, width, 3), as torchvision's `ImageClassification` transform does it on a PIL image:
    converted to the recorded `mode` (PIL's rule: RGBA drops alpha, greyscale is copied to 3 channels), shorter side
    resized to `resize_size` with the recorded interpolation (PIL antialiases bilinear and bicubic), centre crop."""
    p = preprocessing
    if p["interpolation"] not in INTERPOLATIONS:
        raise ValueError(f"preprocessing interpolation {p['interpolation']!r} is not one of {', '.join(INTERPOLATIONS)}")
    img = to_pil(item).convert(p.get("mode", "RGB"))
    h, w = resized_size(img.height, img.width, p["resize_size"])
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), INTERPOLATIONS[p["interpolation"]])
    top, left = centre_crop_offsets(h, w, p["height"], p["width"])
    return np.asarray(img.crop((left, top, left + p["width"], top + p["height"])))


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
