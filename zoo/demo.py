"""`zoo demo`: load one model in both backends, predict digits, show that the outputs agree and, with
pretrained weights, are right."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).with_name("assets") / "mnist_test_first16.npz"  # MNIST test images 0-15, CC BY-SA 3.0


def demo_digits(data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    data_dir = data_dir or os.environ.get("ZOO_DATA_DIR")
    if data_dir and (Path(data_dir) / "mnist" / "test.parquet").is_file():
        from .data import load_split

        split = load_split("mnist", "test", data_dir=data_dir)
        return split.inputs[:16], split.labels[:16]
    with np.load(SAMPLES) as f:
        return f["images"], f["labels"]


def run_demo(name: str = "cnn-mnist", data_dir: str | None = None) -> int:
    import zoo

    from .registry import model_info

    pretrained = bool(model_info(name).get("default_tag"))
    images, labels = demo_digits(data_dir)
    print(f"{name}: {'pretrained weights' if pretrained else 'no shipped weights yet: random initialisation'}")
    torch_model = zoo.load(name, backend="torch", pretrained=pretrained)
    if not pretrained:  # give both backends the same random weights through one checkpoint
        import tempfile

        path = Path(tempfile.mkdtemp()) / f"{name}.safetensors"
        zoo.save(torch_model, path)
        name = str(path)
    jax_model = zoo.load(name, backend="jax", pretrained=pretrained)
    torch_pred = zoo.pipeline(torch_model)(images)
    jax_pred = zoo.pipeline(jax_model)(images)
    print("true label:   " + " ".join(str(int(v)) for v in labels))
    print("torch says:   " + " ".join(torch_pred.labels))
    print("jax says:     " + " ".join(jax_pred.labels))
    diff = float(np.abs(torch_pred.logits - jax_pred.logits).max())
    same = torch_pred.labels == jax_pred.labels
    print(f"max |logit difference| between backends: {diff:.2e}; identical predictions: {same}")
    problems = [] if same and diff < 1e-4 else ["the backends disagree (different predictions, or |logit difference| >= 1e-4)"]
    if pretrained:  # shipped weights must also be right, not merely agree with each other
        for backend, pred in (("torch", torch_pred), ("jax", jax_pred)):
            wrong = int((pred.indices != labels).sum())
            if wrong:
                problems.append(f"{backend}: {wrong} of {len(labels)} predictions are wrong")
    else:
        print("random initialisation: predictions cannot be right, so only backend agreement is checked")
    for problem in problems:
        print(f"zoo demo: FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0
