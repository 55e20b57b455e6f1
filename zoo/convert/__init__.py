"""PyTorch state dict <-> Flax NNX module conversion, driven by a table of rules per layer kind.

    tensors = flax_to_torch(nnx_module)          # {torch name: np.ndarray in PyTorch layout}
    torch_to_flax(state_dict, nnx_module)        # strict: exact key set, shapes and dtypes

The Flax module's attribute paths are PyTorch's module paths (`blocks.0.conv1` is `blocks[0].conv1` in
both), so the rules only translate each layer's own tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from ..checkpoint import check_tensors
from .rules import RULES, Layout, OwnParams, PackedAttention, Renames, Rule, SameNames, register_rule, rule_for

__all__ = [
    "torch_to_flax",
    "flax_to_torch",
    "expected_torch_tensors",
    "register_rule",
    "Rule",
    "Renames",
    "SameNames",
    "OwnParams",
    "PackedAttention",
    "Layout",
    "RULES",
]


def _layers(module: nnx.Module):
    """(torch prefix, layer, rule) for every layer covered by a rule; errors on uncovered parameters."""
    handled: list[tuple[str, nnx.Module, Rule]] = []
    covered: list[tuple] = []
    for path, layer in sorted(nnx.iter_modules(module), key=lambda item: tuple(map(str, item[0]))):
        if any(path[: len(c)] == c for c in covered):
            continue
        rule = rule_for(layer)
        prefix = ".".join(str(p) for p in path)
        if rule is not None:
            if rule.covers_children:
                covered.append(path)
            handled.append((prefix + "." if prefix else "", layer, rule))
        elif any(isinstance(v, (nnx.Param, nnx.BatchStat)) for v in vars(layer).values()):
            raise TypeError(
                f"No conversion rule for layer kind {type(layer).__name__} at {prefix or '<root>'}; "
                "register one with zoo.convert.register_rule"
            )
    return handled


def flax_to_torch(module: nnx.Module, kind: type = nnx.Variable) -> dict[str, np.ndarray]:
    """The PyTorch state dict (names, layouts, dtypes) of a Flax NNX module, as NumPy arrays.
    `kind=nnx.Param` gives the parameters only (`named_parameters` rather than `state_dict`)."""
    out: dict[str, np.ndarray] = {}
    for prefix, layer, rule in _layers(module):
        for name, value in rule.to_torch(layer, kind).items():
            out[prefix + name] = np.asarray(value, order="C")
    return out


def expected_torch_tensors(module: nnx.Module) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {k: (v.shape, v.dtype) for k, v in flax_to_torch(module).items()}


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.array(value)  # a copy: a later in-place update of the source (running statistics) must not reach the module


def torch_to_flax(state_dict: dict[str, Any], module: nnx.Module, source: str = "state dict") -> nnx.Module:
    """Load a PyTorch state dict (tensors or arrays) into `module` in place, strictly; returns `module`."""
    tensors = {k: _as_numpy(v) for k, v in state_dict.items()}
    check_tensors(expected_torch_tensors(module), tensors, source)
    for prefix, layer, rule in _layers(module):
        n = len(prefix)
        rule.to_flax(layer, {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)})
    return module


