"""Input adaptation: making a new source's inputs match what a base model expects. One NumPy/PIL
implementation serves both backends, and a rule is a small JSON-able dict that a fine-tuned checkpoint records
in its preprocessing, so the same rule can be applied again at prediction time:

    {"colour": "luma" | "replicate" | None, "resize": "mnist_frame" | "resize" | None}

- colour "luma": RGB -> greyscale with PIL's ITU-R 601-2 rule (`to_grey`); "replicate": greyscale -> RGB by
  copying the channel; None: the channels must already match.
- resize "mnist_frame": MNIST's own framing (`mnist_frame`, 28x28 greyscale targets only); "resize": a plain
  anti-aliased resize to the target size (`resize`); None: the size must already match.

The colour rule is applied first, then the resize rule. Both image resizes use the same filter (PIL's Lanczos),
so comparing them compares the framing alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COLOUR_RULES = (None, "luma", "replicate")
RESIZE_RULES = (None, "mnist_frame", "resize")
MNIST_SIZE, MNIST_BOX, MNIST_CENTRE = 28, 20, 14.0  # LeCun: digit fitted in a 20x20 box, centre of mass at the centre of 28x28


def _check(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    return images


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image[..., 0] if image.shape[2] == 1 else image, "L" if image.shape[2] == 1 else "RGB")


def _lanczos():
    from PIL import Image

    return Image.Resampling.LANCZOS


def to_grey(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, H, W, 1), exactly as PIL's `convert("L")`: L = R*299/1000 + G*587/1000 + B*114/1000,
    in PIL's 16-bit fixed point ((19595 R + 38470 G + 7471 B + 2**15) >> 16)."""
    images = _check(images)
    if images.shape[3] != 3:
        raise ValueError(f"to_grey needs 3-channel images, got {images.shape[3]} channels")
    rgb = images.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Plain anti-aliased resize (PIL Lanczos) of uint8 (N, H, W, C) with C = 1 or 3, aspect ratio not kept."""
    images = _check(images)
    if images.shape[3] not in (1, 3):
        raise ValueError(f"resize needs 1 or 3 channels, got {images.shape[3]}")
    out = np.empty((len(images), height, width, images.shape[3]), np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(_pil(image).resize((width, height), _lanczos())).reshape(height, width, -1)
    return out


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))  # halves round up, on both sides of zero


def mnist_frame(images: np.ndarray, threshold: int = 0) -> np.ndarray:
    """MNIST's framing for greyscale digits (ink bright on black), uint8 (N, H, W, 1) -> (N, 28, 28, 1).

    Each digit's ink bounding box (pixels > `threshold`) is scaled with an anti-aliasing filter (PIL Lanczos) so
    that its larger side is 20 pixels, aspect ratio kept (the smaller side rounded, at least 1), and pasted in a
    black 28x28 canvas at the integer offset (rounded, halves up) that puts its intensity-weighted centre of mass,
    in pixel-index coordinates, nearest to (14, 14), the centre MNIST's own digits have. When that offset would push
    ink off the canvas it is clamped so the whole 20-pixel box stays inside. Empty images stay black."""
    images = _check(images)
    if images.shape[3] != 1:
        raise ValueError(f"mnist_frame needs greyscale images (N, H, W, 1), got {images.shape[3]} channels; set colour 'luma'")
    out = np.zeros((len(images), MNIST_SIZE, MNIST_SIZE, 1), np.uint8)
    for i, image in enumerate(images[..., 0]):
        ys, xs = np.nonzero(image > threshold)
        if len(ys) == 0:
            continue
        crop = image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        h, w = crop.shape
        scale = MNIST_BOX / max(h, w)
        new_h, new_w = max(1, _round(h * scale)), max(1, _round(w * scale))
        box = np.asarray(_pil(crop[..., None]).resize((new_w, new_h), _lanczos()))
        mass = box.astype(np.float64)
        total = mass.sum()
        if total == 0:  # ink fainter than what the resampling keeps
            continue
        cy = (mass.sum(1) * np.arange(new_h)).sum() / total
        cx = (mass.sum(0) * np.arange(new_w)).sum() / total
        top = min(max(_round(MNIST_CENTRE - cy), 0), MNIST_SIZE - new_h)
        left = min(max(_round(MNIST_CENTRE - cx), 0), MNIST_SIZE - new_w)
        out[i, top : top + new_h, left : left + new_w, 0] = box
    return out


def check_rule(rule: dict | None) -> dict:
    """The rule with both keys present; unknown keys or values are errors."""
    rule = dict(rule or {})
    unknown = set(rule) - {"colour", "resize"}
    if unknown:
        raise ValueError(f"unknown adapt rule key(s) {sorted(unknown)}; a rule has 'colour' and 'resize'")
    rule.setdefault("colour", None)
    rule.setdefault("resize", None)
    if rule["colour"] not in COLOUR_RULES:
        raise ValueError(f"unknown colour rule {rule['colour']!r}; use one of {COLOUR_RULES}")
    if rule["resize"] not in RESIZE_RULES:
        raise ValueError(f"unknown resize rule {rule['resize']!r}; use one of {RESIZE_RULES}")
    return rule


def describe_rule(rule: dict | None) -> str:
    rule = check_rule(rule)
    colour = {None: "channels unchanged", "luma": "RGB to grey (ITU-R 601-2 luma, as PIL)",
              "replicate": "grey to RGB (channel copied)"}[rule["colour"]]
    size = {None: "size unchanged", "mnist_frame": "MNIST framing (20-pixel box, centre of mass at (14, 14) of 28x28)",
            "resize": "plain anti-aliased resize (Lanczos)"}[rule["resize"]]
    return f"{colour}; {size}"


def adapt_images(images: np.ndarray, rule: dict | None, target: dict) -> np.ndarray:
    """uint8 (N, H, W, C) -> uint8 (N, target height, width, channels): the colour rule, then the resize rule.
    `target` is a model's image preprocessing (keys height, width, channels). A mismatch that the rule leaves
    unhandled is an error that says which rule to set."""
    images = _check(images)
    rule = check_rule(rule)
    height, width, channels = int(target["height"]), int(target["width"]), int(target["channels"])
    c = images.shape[3]
    if rule["colour"] == "luma" and c == 3:
        images = to_grey(images)
    elif rule["colour"] == "replicate" and c == 1:
        images = np.repeat(images, 3, axis=3)
    if images.shape[3] != channels:
        fix = {(3, 1): "set colour 'luma'", (1, 3): "set colour 'replicate'"}.get((images.shape[3], channels), "no rule converts them")
        raise ValueError(f"images have {images.shape[3]} channel(s) but the model expects {channels}: {fix}")
    if rule["resize"] == "mnist_frame":
        if (height, width, channels) != (MNIST_SIZE, MNIST_SIZE, 1):
            raise ValueError(f"resize 'mnist_frame' makes 28x28x1 images but the model expects {height}x{width}x{channels}; "
                             f"use resize 'resize'")
        images = mnist_frame(images)
    elif rule["resize"] == "resize":
        images = resize(images, height, width)
    if images.shape[1:3] != (height, width):
        raise ValueError(f"images are {images.shape[1]}x{images.shape[2]} but the model expects {height}x{width}: "
                         f"set resize 'mnist_frame' (digits, for 28x28 greyscale models) or 'resize'")
    return images


def unk_rate(texts: Sequence[str], tokenizer_json: str) -> float:
    """Fraction of all tokens of `texts` that the tokenizer maps to its [UNK] id (NaN when there are no tokens):
    how much of the new text the base model's vocabulary does not cover."""
    from .text import UNK, _tokenizer

    tok = _tokenizer(tokenizer_json)
    unk = tok.token_to_id(UNK)
    if unk is None:
        raise ValueError(f"the tokenizer has no {UNK} token")
    total = unknown = 0
    for enc in tok.encode_batch(list(texts)):
        ids = np.asarray(enc.ids, np.int64)
        total += len(ids)
        unknown += int(np.count_nonzero(ids == unk))
    return unknown / total if total else float("nan")
