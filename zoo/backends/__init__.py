"""One adapter per framework with the same functions, so the API, tests and training code are written
once: build, export/load the canonical state dict, convert canonical NumPy batches, run forward."""

from __future__ import annotations

import importlib

ALIASES = {"torch": "torch", "pytorch": "torch", "jax": "jax", "flax": "jax"}
BACKENDS = ("torch", "jax")


def canonical_backend(backend: str) -> str:
    try:
        return ALIASES[backend.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"Unknown backend {backend!r}; use 'torch' or 'jax'") from None


def get_backend(backend: str):
    name = canonical_backend(backend)
    return importlib.import_module(f"zoo.backends.{name}_backend")


def backend_of(model) -> str:
    """'torch' or 'jax' for a model object, without importing a framework that is not loaded."""
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root == "torch":
            return "torch"
        if root == "flax":
            return "jax"
    raise TypeError(f"{type(model).__name__} is neither a torch.nn.Module nor a flax.nnx.Module")
