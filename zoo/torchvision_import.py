"""`zoo import torchvision:NAME --weights WEIGHTS`: torchvision's pretrained classifiers as zoo checkpoints.

The zoo ships no ImageNet weights. Each user imports them once: torchvision itself fetches them on the user's
machine (`weights.get_state_dict`, into torchvision's own download cache, with its hash check), they load
strictly into the PyTorch twin, and one zoo `.safetensors` is written carrying what torchvision states about them:

- the preprocessing of `weights.transforms()` (resize size, crop size, mean/std, interpolation) and mode RGB;
- the category names of `weights.meta["categories"]`;
- metadata keys `source` (`torchvision:NAME`), `source_weights` (`ResNet50_Weights.IMAGENET1K_V2`), `source_url`,
  `license` (`meta["license"]`, else "not stated by torchvision"), `recipe`, and `reported_metrics`: the accuracy
  torchvision reports (`meta["_metrics"]`), recorded as reported by torchvision, never as measured by the zoo.

torchvision is imported here and nowhere else in the zoo."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PREFIX = "torchvision:"
NO_LICENSE = "not stated by torchvision"
REPORTED_BY = "torchvision"  # reported_metrics["reported_by"]: "torchvision VERSION"; the zoo measured none of it


def importable() -> dict[str, str]:
    """`torchvision:NAME` -> registry model name, for every registry model whose weights come from torchvision."""
    from . import registry

    return {registry.model_info(n)["import_from"]: n for n in registry.list_models() if registry.model_info(n).get("import_from")}


def registry_name(source: str) -> str:
    """The registry model behind `torchvision:NAME`; an error listing the importable ones otherwise."""
    models = importable()
    if source not in models:
        import difflib

        close = difflib.get_close_matches(source, models, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise LookupError(f"cannot import {source!r}: not a zoo model.{hint} Importable: {', '.join(sorted(models))}")
    return models[source]


def _torchvision():
    try:
        import torchvision
    except ImportError:
        raise ImportError("zoo import needs torchvision (and Pillow): pip install 'zoo-twins[vision]'") from None
    return torchvision


def resolve_weights(source: str, weights: str = "DEFAULT"):
    """torchvision's weights enum member for `source` (`torchvision:NAME`) and `weights`: a member name
    (`IMAGENET1K_V2`), its full name (`ResNet50_Weights.IMAGENET1K_V2`) or `DEFAULT`."""
    registry_name(source)
    enum = _torchvision().models.get_model_weights(source.removeprefix(PREFIX))
    wanted = str(weights).removeprefix(f"{enum.__name__}.")
    if wanted == "DEFAULT":
        return enum.DEFAULT
    if wanted not in enum.__members__:
        valid = ", ".join([f"DEFAULT (= {enum.DEFAULT.name})"] + [w.name for w in enum])
        raise LookupError(f"{source} has no weights {weights!r}; torchvision {_torchvision().__version__} has: {valid}")
    return enum[wanted]


def preprocessing_of(weights, base: dict[str, Any]) -> dict[str, Any]:
    """The zoo preprocessing equal to `weights.transforms()` (torchvision's ImageClassification preset), over `base`."""
    t = weights.transforms()
    name = f"{type(weights).__name__}.{weights.name}"
    if type(t).__name__ != "ImageClassification" or len(t.crop_size) != 1 or len(t.resize_size) != 1:
        raise ValueError(f"{name}: transforms() is {t!r}, not an ImageClassification preset with one crop and one resize size")
    if t.antialias is False:  # PIL always antialiases; torchvision's tensor path would not
        raise ValueError(f"{name}: transforms() resizes without antialiasing, which the zoo's PIL preprocessing cannot reproduce")
    return {**base, "kind": "image", "height": t.crop_size[0], "width": t.crop_size[0], "channels": 3, "mean": list(t.mean),
            "std": list(t.std), "resize_size": t.resize_size[0], "interpolation": t.interpolation.value, "mode": "RGB"}


def config_of(weights, base: dict[str, Any]) -> dict[str, Any]:
    """The model config these weights need, as torchvision's builders override it: the number of categories and,
    for a ViT, the image size of `meta["min_size"]` (384 for IMAGENET1K_SWAG_E2E_V1)."""
    config = {**base, "num_classes": len(weights.meta["categories"])}
    if "image_size" in config:
        config["image_size"] = weights.meta["min_size"][0]
    return config


def provenance(source: str, weights) -> dict[str, str]:
    """The string metadata recording where the weights come from and what torchvision states about them."""
    version = _torchvision().__version__
    meta = weights.meta
    reported = {"reported_by": f"{REPORTED_BY} {version}", "where": "weights.meta['_metrics']", "measured_by_zoo": False,
                "metrics": meta.get("_metrics", {})}
    return {"source": source, "source_weights": f"{type(weights).__name__}.{weights.name}", "source_url": weights.url,
            "license": meta.get("license") or NO_LICENSE, "recipe": meta.get("recipe", ""),
            "reported_metrics": json.dumps(reported, sort_keys=True)}


def default_out(source: str, weights) -> Path:
    """`resnet50.IMAGENET1K_V2.safetensors` in the working directory."""
    return Path(f"{registry_name(source)}.{weights.name}.safetensors")


def import_weights(source: str, weights: str = "DEFAULT", out: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Fetch torchvision's `weights` for `source` (`torchvision:resnet50`) through torchvision, load them strictly
    into the zoo's PyTorch twin and write one zoo checkpoint (atomically) to `out` (default
    `NAME.WEIGHTS.safetensors` in the working directory). Returns its path; load it with `zoo.load(path, backend=...)`."""
    from . import registry
    from .backends import get_backend
    from .checkpoint import make_metadata, write_checkpoint

    name = registry_name(source)
    w = resolve_weights(source, weights)
    base = registry.get_spec(name)
    spec = base.replace(config=config_of(w, base.config), preprocessing=preprocessing_of(w, base.preprocessing),
                        labels=[str(c) for c in w.meta["categories"]], provenance=provenance(source, w))
    out = Path(out) if out is not None else default_out(source, w)
    try:
        state = w.get_state_dict(progress=progress, check_hash=True)  # torchvision's cache; a fresh download is hash-checked
    except OSError as e:  # no network, a refused or interrupted download
        import torch

        raise OSError(f"could not fetch {w.url} for {source} {w.name} ({e}); zoo import needs the internet once, then "
                      f"torchvision's cache ({Path(torch.hub.get_dir()) / 'checkpoints'}) serves it") from None
    b = get_backend("torch")
    model = b.build(spec, source=w.url)
    b.load_numpy_state(model, {k: v.detach().cpu().numpy() for k, v in state.items()}, source=w.url)  # strict: every key, shape, dtype
    written_by = f"{b.framework_version()}; torchvision {_torchvision().__version__} (zoo import)"
    return write_checkpoint(out, b.state_to_numpy(model), make_metadata(spec, written_by))
