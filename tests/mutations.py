"""The mutation suite: known bugs planted into one twin at a time; the parity tests must catch each one.

Each mutation replaces one exact piece of source text (found exactly once, so a mutation that no longer
applies fails loudly instead of testing nothing) in a copy of the checkout, then runs the tests that
should catch it against that copy. `python tests/mutations.py --write` runs them all and writes
`reports/mutations.json`, from which `python -m zoo.docs --write` makes the README's table;
`tests/test_mutations.py` (slow tier) re-runs each and compares with that report."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "mutations.json"


@dataclass(frozen=True)
class Mutation:
    id: str
    bug: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments selecting the tests expected to catch it


def parity(model: str, *tests: str, also: str = "") -> tuple[str, ...]:
    """The parity tests named `tests` for `model`, plus every test of the module `also`."""
    files = ("tests/test_parity.py",) + ((f"tests/{also}.py",) if also else ())
    return (*files, "-k", f"({model} and ({' or '.join(tests)}))" + (f" or {also}" if also else ""))


MUTATIONS = [
    Mutation("adam-eps-in-sqrt", "Adam's eps inside the square root (optax)", "zoo/optim.py",
             "optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps,",
             "optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, eps=0.0, eps_root=cfg.eps,",
             parity("cnn-mnist", "test_full_training", "test_float64", also="test_optimizers")),
    Mutation("weight-decay-dropped", "AdamW's weight decay dropped (optax)", "zoo/optim.py",
             "b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay)\n    if cfg.name == \"adam\"",
             "b2=cfg.beta2, eps=cfg.eps, weight_decay=0.0)\n    if cfg.name == \"adam\"",
             parity("cnn-mnist", "test_full_training", "test_float64", also="test_optimizers")),
    Mutation("sgd-momentum-dropped", "SGD momentum dropped (optax)", "zoo/optim.py",
             "momentum=cfg.momentum or None", "momentum=None",
             parity("mlp-mnist", "test_full_training", "test_float64", also="test_optimizers")),
    Mutation("batchnorm-momentum", "BatchNorm running statistics with Flax's momentum convention (m on the old value)",
             "zoo/flax_models/layers.py", "self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)",
             "self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)",
             parity("resnet-mnist", "running_stats", "test_float64")),
    Mutation("batchnorm-biased-variance", "BatchNorm running variance biased (no n/(n-1))", "zoo/flax_models/layers.py",
             "unbiased = jax.lax.stop_gradient(var) * (n / max(n - 1, 1))", "unbiased = jax.lax.stop_gradient(var)",
             parity("resnet-mnist", "running_stats", "test_float64")),
    Mutation("gru-b_hn-outside-reset", "GRU's b_hn added outside the reset gate", "zoo/flax_models/layers.py",
             "n = jnp.tanh(xn + r * hn)", "n = jnp.tanh(xn + r * (hn - bias_hh[2 * h_size:]) + bias_hh[2 * h_size:])",
             parity("gru-imdb", "test_logits", "test_gradients_match", "test_padding", also="test_recurrent")),
    Mutation("lstm-gate-order", "LSTM gates read as f, i, g, o instead of PyTorch's i, f, g, o", "zoo/flax_models/layers.py",
             "i, f, g, o = (gates[", "f, i, g, o = (gates[",
             parity("lstm-imdb", "test_logits", "test_gradients_match", "test_padding", also="test_recurrent")),
    Mutation("backward-from-padding", "backward direction starts at the end of the padded row, not the last real token",
             "zoo/flax_models/layers.py", "        if suffix:\n            x = reverse_padded(x, lengths)",
             "        if suffix:\n            x = reverse_padded(x, jnp.full_like(lengths, x.shape[1]))",
             parity("lstm-imdb", "test_logits", "test_gradients_match", "test_padding", also="test_recurrent")),
    Mutation("layernorm-eps", "final LayerNorm eps 1e-6 (Flax's default) instead of 1e-5", "zoo/flax_models/transformer.py",
             "self.norm = nnx.LayerNorm(dim, epsilon=layer_norm_eps,", "self.norm = nnx.LayerNorm(dim, epsilon=1e-6,",
             parity("transformer-imdb", "test_logits", "test_gradients_match", "running_stats", "test_float64")),
    Mutation("tanh-gelu", "tanh-approximate GELU (jax.nn.gelu's default)", "zoo/flax_models/transformer.py",
             "approximate=False)", "approximate=True)", parity("transformer-imdb", "test_logits", "test_gradients_match", "test_float64")),
    Mutation("conv-kernel-transposed", "conv kernels loaded with height and width swapped", "zoo/convert/rules.py",
             "lambda w: w.transpose(2, 3, 1, 0)", "lambda w: w.transpose(3, 2, 1, 0)",
             parity("cnn-mnist", "test_logits", "test_gradients_match", "round_trip")),
    Mutation("cnn-flatten-order", "Flax CNN flattens NHWC activations in H,W,C order", "zoo/flax_models/cnn.py",
             "x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)", "x = x.reshape(x.shape[0], -1)",
             parity("cnn-mnist", "test_logits", "test_gradients_match")),
    # torchvision's layers (small twins at the fast tier's 64x64; vit_b_16 at 224x224 in the slow tier)
    Mutation("se-sigmoid-scale", "MobileNetV3's squeeze-excitation scaled by sigmoid, not hard-sigmoid",
             "zoo/flax_models/tv_mobilenet_v3.py", 'scale_activation="hardsigmoid"', 'scale_activation="sigmoid"',
             parity("mobilenet_v3_small", "test_logits", "test_gradients_match")),
    Mutation("se-squeeze-max", "squeeze-excitation squeezes by max, not mean", "zoo/flax_models/layers.py",
             "scale = x.mean(axis=(1, 2), keepdims=True)", "scale = x.max(axis=(1, 2), keepdims=True)",
             parity("efficientnet_b0", "test_logits", "test_gradients_match")),
    Mutation("mobilenet-batchnorm-eps", "MobileNetV3's BatchNorm eps 1e-5 (PyTorch's default) instead of 1e-3",
             "zoo/flax_models/tv_mobilenet_v3.py", 'NORM = {"eps": 0.001,', 'NORM = {"eps": 1e-5,',
             parity("mobilenet_v3_small", "test_logits", "running_stats")),
    Mutation("vit-tanh-gelu", "ViT's MLP with tanh-approximate GELU (jax.nn.gelu's default)", "zoo/flax_models/tv_vit.py",
             "approximate=False)", "approximate=True)", parity("vit_b_16", "test_logits")),
    Mutation("vit-class-token-last", "ViT's class token appended after the patches, not before",
             "zoo/flax_models/tv_vit.py", "jnp.concatenate([batch_class_token, x], axis=1)",
             "jnp.concatenate([x, batch_class_token], axis=1)", parity("vit_b_16", "test_logits")),
]


def apply(mutation: Mutation, root: Path) -> None:
    path = root / mutation.file
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise ValueError(f"mutation {mutation.id}: {mutation.file} holds {count} copies of {mutation.old!r}, expected exactly 1")
    path.write_text(text.replace(mutation.old, mutation.new))


def run(mutation: Mutation, tests: list[str] | None = None, timeout: int = 1800) -> dict:
    """Plant the bug in a copy of the checkout and run its tests there (or the node ids `tests`); returns the failing tests."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutation.id}-") as tmp:
        copy = Path(tmp)
        for part in ("zoo", "tests", "pyproject.toml"):
            source = ROOT / part
            (shutil.copytree if source.is_dir() else shutil.copy)(source, copy / part)
        apply(mutation, copy)
        env = {**os.environ, "PYTHONPATH": str(copy), "ZOO_FLOAT64_SEEDS": "1", "ZOO_DATA_DIR": os.environ.get("ZOO_DATA_DIR", "")}
        data = ROOT.parent / "shared" / "data"
        if not env["ZOO_DATA_DIR"] and data.is_dir():
            env["ZOO_DATA_DIR"] = str(data)
        result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rf",
                                 "-o", "addopts=", *(tests or mutation.tests)], cwd=copy, env=env, capture_output=True, text=True,
                                timeout=timeout)
    failed = sorted(set(re.findall(r"^FAILED (\S+?)(?: - |$)", result.stdout, re.M)))
    if result.returncode not in (0, 1) or (result.returncode == 1 and not failed):
        raise RuntimeError(f"mutation {mutation.id}: pytest exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {"id": mutation.id, "bug": mutation.bug, "file": mutation.file, "caught_by": failed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", nargs="*", help="mutation ids (default: all)")
    parser.add_argument("--write", action="store_true", help=f"write {REPORT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.ids or m.id in args.ids]
    results = []
    for mutation in chosen:
        results.append(run(mutation))
        print(json.dumps(results[-1]), flush=True)
    if args.write:  # with ids: those entries replaced, the others kept as measured before
        REPORT.parent.mkdir(exist_ok=True)
        if args.ids and REPORT.exists():
            fresh = {r["id"]: r for r in results}
            results = [fresh.pop(r["id"], r) for r in json.loads(REPORT.read_text())["mutations"]] + list(fresh.values())
        REPORT.write_text(json.dumps({"mutations": results}, indent=2) + "\n")
    missed = [r["id"] for r in results if not r["caught_by"]]
    if missed:
        print(f"NOT CAUGHT: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
