"""`zoo import` of torchvision's six classifiers, end to end, with seeded random weights in place of the real ones.

    python benchmarks/torchvision_import.py [--models resnet18 ...] [--results DIR]

No weights can be downloaded here, so for each model a seeded torchvision state dict
(`torch.manual_seed(0); torchvision.models.get_model(NAME, weights=None).state_dict()`) is saved in a temporary torch
hub cache under the exact file name torchvision's `load_state_dict_from_url` looks for; `zoo import` then runs its
ordinary path (`weights.get_state_dict`) and finds it there. The labels predicted are therefore meaningless, but must
be identical in both backends. Per model: the file's tensors against the seeded state dict, the top-5 of
`zoo.pipeline` on matplotlib's grace_hopper.jpg in PyTorch and JAX, their largest logit difference, and the zoo's
preprocessing against torchvision's `weights.transforms()` on the PIL image and on a uint8 tensor of it. Models whose
twins do not exist yet are skipped. Writes benchmarks/results/torchvision_import/results.{json,md}."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

MODELS = ("resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16")
RESULTS = Path(__file__).resolve().parent / "results" / "torchvision_import"
SEED = 0


def photo_path() -> str:
    """The sample photo: matplotlib's grace_hopper.jpg (512 x 600, RGB)."""
    from matplotlib import cbook

    return str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def seed_torchvision_cache(source: str, weights: str = "DEFAULT", seed: int = SEED) -> dict:
    """Save a seeded random torchvision state dict where `weights.get_state_dict()` looks first (torch.hub.get_dir(),
    i.e. $TORCH_HOME/hub, + checkpoints/<basename of weights.url>), so the import finds it without downloading.
    Returns the state dict written."""
    from urllib.parse import urlparse

    import torch
    from torchvision.models import get_model

    from zoo.torchvision_import import resolve_weights

    name = source.removeprefix("torchvision:")
    w = resolve_weights(source, weights)
    kwargs = {"num_classes": len(w.meta["categories"])}
    if name.startswith("vit_"):
        kwargs["image_size"] = w.meta["min_size"][0]  # as torchvision's ViT builder sets it for these weights
    torch.manual_seed(seed)
    model = get_model(name, weights=None, **kwargs)
    state = informative(model, kwargs.get("image_size", 224)).state_dict()
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def informative(model, size: int):
    """torchvision's own seeded initialisation, made to give informative logits. As initialised, ViT's head is zero
    (every logit exactly 0), and in MobileNetV3 and EfficientNet the signal shrinks to ~1e-9 and ~1e-14 through
    dozens of blocks whose batch norms hold their initial statistics (mean 0, variance 1): a top-5 over such logits
    is the first five classes in both backends, whatever the twins compute. So all-zero weight matrices are redrawn
    (normal, std 0.02) and every batch norm's running statistics are measured on 4 noise images (train mode, once),
    all from the seed already set, so the weights stay deterministic."""
    import torch

    for p in model.parameters():
        if p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.02)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over what it sees: here, one batch
        with torch.no_grad():
            model.train()(torch.randn(4, 3, size, size))
    return model.eval()


def twins_exist(name: str) -> bool:
    """Both twins of the registry model `name` are importable (others may still be writing them)."""
    import importlib.util

    from zoo.architectures import ARCHITECTURES
    from zoo.registry import model_info

    modules = [m.partition(":")[0] for m in ARCHITECTURES.get(model_info(name)["arch"], {}).values()]
    return bool(modules) and all(importlib.util.find_spec(m) is not None for m in modules)


def preprocessing_difference(path: str, weights, preprocessing: dict) -> dict:
    """The zoo's preprocessing of the photo against torchvision's `weights.transforms()`: on the PIL image (the same
    PIL resize: should be 0) and on a uint8 (3, H, W) tensor of it (torch's antialiased interpolate, not PIL's)."""
    import numpy as np
    import torch

    from zoo.preprocess import image_batch, open_image

    ours = image_batch(path, preprocessing)[0].transpose(2, 0, 1)  # (3, H, W) like torchvision's
    image = open_image(path).convert("RGB")
    transform = weights.transforms()
    levels = np.asarray(preprocessing["std"], np.float32)[:, None, None] * 255  # one uint8 level, in normalised units
    out = {}
    for kind, given in (("pil", image), ("tensor", torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy()))):
        diff = np.abs(ours - transform(given).numpy())
        out[kind] = {"max_abs_diff": float(diff.max()), "max_uint8_levels": int(np.rint((diff * levels).max())),
                     "fraction_differing": round(float((diff > 0).mean()), 6)}
    return out


def top5(prediction, labels: list[str]) -> list[dict]:

    row = prediction.probabilities[0]
    return [{"label": labels[i], "index": int(i), "probability": float(f"{row[i]:.6g}")} for i in top_indices(prediction.logits[0], 5)]


def top_indices(logits, k: int) -> list[int]:
    import numpy as np

    return [int(i) for i in np.argsort(-logits, kind="stable")[:k]]


def smallest_gap(logits) -> float:
    """The smallest difference between consecutive logits among the top 6: the top-5 comparison means something
    only where this is well above the backends' logit difference."""
    import numpy as np

    top = np.sort(logits)[::-1][:6]
    return float(f"{np.diff(-top).min():.3g}")


def measure(name: str, workdir: Path) -> dict:
    """Import seeded weights for `name` through `zoo import`'s ordinary path and measure the file in both backends."""
    import numpy as np

    import zoo
    from zoo.checkpoint import read_checkpoint
    from zoo.torchvision_import import resolve_weights

    source = zoo.model_info(name)["import_from"]
    weights = resolve_weights(source)
    state = seed_torchvision_cache(source)
    path = zoo.import_weights(source, out=workdir / f"{name}.safetensors", progress=False)
    ckpt = read_checkpoint(path)
    exact = ckpt.tensors.keys() == state.keys() and all(
        ckpt.tensors[k].dtype == state[k].numpy().dtype and np.array_equal(ckpt.tensors[k], state[k].numpy()) for k in state)
    photo, logits, result = photo_path(), {}, {}
    for backend in ("torch", "jax"):
        prediction = zoo.pipeline(str(path), backend=backend)(photo)
        logits[backend] = prediction.logits
        result[backend] = top5(prediction, ckpt.labels)
    return {
        "model": name, "source": source, "weights": f"{type(weights).__name__}.{weights.name}", "seed": SEED,
        "preprocessing": {k: ckpt.preprocessing[k] for k in ("resize_size", "height", "width", "interpolation", "mode")},
        "file_equals_seeded_state_dict": bool(exact), "num_tensors": len(state),
        "top5": result, "top5_identical": [r["index"] for r in result["torch"]] == [r["index"] for r in result["jax"]],
        "max_abs_logit_diff": float(f"{np.abs(logits['torch'] - logits['jax']).max():.3g}"),
        "top6_smallest_gap": smallest_gap(logits["torch"][0]),
        "preprocessing_vs_torchvision": preprocessing_difference(photo, weights, ckpt.preprocessing),
    }


def versions() -> dict:
    from importlib.metadata import version

    return {**{p: version(p) for p in ("torch", "torchvision", "jax", "flax", "numpy", "Pillow")}, "python": platform.python_version()}


def markdown(results: dict) -> str:
    lines = ["# `zoo import torchvision:NAME` with seeded random weights", "",
             "The weights are seeded random (`torch.manual_seed(0)`, torchvision's own initialisation with zero matrices "
             "redrawn and batch-norm statistics measured on noise, so that logits are informative), placed in torchvision's "
             "download cache and imported by the ordinary `zoo import` path: the labels below are meaningless, but must be "
             "identical in both backends. Photo: matplotlib's grace_hopper.jpg. Preprocessing difference: the zoo's against "
             "torchvision's `weights.transforms()`, on the PIL image and on a uint8 tensor of it (normalised units; "
             "one uint8 level is about 0.017).", "",
             "| model | weights | resize → crop, interpolation | file = seeded state dict | top-5 (torch) | top-5 (jax) "
             "| same top-5 | max abs logit diff | smallest gap in top 6 | vs transforms() on PIL | vs transforms() on tensor |",
             "|---" * 11 + "|"]
    for r in results["models"]:
        p, d = r["preprocessing"], r["preprocessing_vs_torchvision"]
        tops = {b: ", ".join(x["label"] for x in r["top5"][b]) for b in ("torch", "jax")}
        lines.append(f"| `{r['model']}` | `{r['weights']}` | {p['resize_size']} → {p['height']}x{p['width']}, {p['interpolation']} "
                     f"| {'yes' if r['file_equals_seeded_state_dict'] else '**no**'} | {tops['torch']} | {tops['jax']} "
                     f"| {'yes' if r['top5_identical'] else '**no**'} | {r['max_abs_logit_diff']:.1e} | {r['top6_smallest_gap']:.1e} "
                     f"| {d['pil']['max_abs_diff']:.1e} "
                     f"| {d['tensor']['max_abs_diff']:.1e} ({d['tensor']['max_uint8_levels']} uint8 level(s), "
                     f"{100 * d['tensor']['fraction_differing']:.1f} % of values) |")
    if results["skipped"]:
        lines += ["", f"Skipped (twins not written yet): {', '.join(results['skipped'])}."]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + "."]
    return "\n".join(lines) + "\n"


def run(models: list[str]) -> dict:
    """Measure `models` (those with both twins) in a temporary torch hub cache; the results document."""
    measured, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="zoo-tv-import-") as tmp:
        old = os.environ.get("TORCH_HOME")
        os.environ["TORCH_HOME"] = tmp  # torch.hub.get_dir() reads it on every call
        try:
            for name in models:
                if not twins_exist(name):
                    skipped.append(name)
                    continue
                print(f"{name} ...", file=sys.stderr, flush=True)
                measured.append(measure(name, Path(tmp)))
        finally:
            if old is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = old
    return {"models": measured, "skipped": skipped, "versions": versions()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    from zoo.atomic import write_text_atomic

    results = run(args.models)
    write_text_atomic(args.results / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(args.results / "results.md", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
