"""Architecture names -> the twin classes. A checkpoint's metadata can only pick a key of this table;
it never names code to import."""

from __future__ import annotations

import importlib

ARCHITECTURES: dict[str, dict[str, str]] = {
    "mlp": {"torch": "zoo.torch_models.mlp:MLP", "jax": "zoo.flax_models.mlp:MLP"},
    "cnn": {"torch": "zoo.torch_models.cnn:CNN", "jax": "zoo.flax_models.cnn:CNN"},
    "resnet": {"torch": "zoo.torch_models.resnet:ResNet", "jax": "zoo.flax_models.resnet:ResNet"},
    "rnn": {"torch": "zoo.torch_models.rnn:RNNClassifier", "jax": "zoo.flax_models.rnn:RNNClassifier"},
    "transformer": {"torch": "zoo.torch_models.transformer:TransformerClassifier",
                    "jax": "zoo.flax_models.transformer:TransformerClassifier"},
}


def model_class(arch: str, backend: str, source: str = "registry"):
    if arch not in ARCHITECTURES:
        raise ValueError(f"{source}: unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    module_name, _, class_name = ARCHITECTURES[arch][backend].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
