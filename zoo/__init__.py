"""zoo: PyTorch and Flax NNX twin models sharing one safetensors checkpoint.

    import zoo
    model = zoo.load("cnn-mnist", backend="jax")      # or backend="torch"
    zoo.pipeline("cnn-mnist", backend="torch")(images).labels

`import zoo` stays light: no framework and no huggingface_hub is imported until used.
"""

from __future__ import annotations

from ._version import __version__
from .registry import list_models, model_info

__all__ = ["__version__", "list_models", "model_info", "load", "save", "pipeline", "import_weights", "convert", "registry"]

_LAZY = {"load": "api", "save": "api", "pipeline": "api", "Pipeline": "api", "Prediction": "api",
         "import_weights": "torchvision_import"}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f"zoo.{_LAZY[name]}"), name)
    if name in ("convert", "data", "train", "hub", "checkpoint", "backends"):
        return importlib.import_module(f"zoo.{name}")
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
