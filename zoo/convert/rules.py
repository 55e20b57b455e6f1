"""Conversion rules, one per layer kind. A rule maps one Flax NNX layer to the PyTorch tensors of its
twin (names relative to the layer, PyTorch layouts) and back. Rules never name a model: any model built
from these layers converts without new code. Register a rule for a new layer kind with `register_rule`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclass(frozen=True)
class Layout:
    """How one tensor's PyTorch layout and dtype relate to its Flax variable."""

    to_torch: Callable[[np.ndarray], np.ndarray]
    to_flax: Callable[[np.ndarray], np.ndarray]
    torch_dtype: str = "float32"


SAME = Layout(lambda a: a, lambda a: a)
LINEAR = Layout(lambda k: k.T, lambda w: w.T)  # (in, out) <-> (out, in)
CONV = Layout(lambda k: k.transpose(3, 2, 0, 1), lambda w: w.transpose(2, 3, 1, 0))  # HWIO <-> OIHW
COUNTER = Layout(lambda c: c.astype(np.int64), lambda c: c.astype(np.int32), torch_dtype="int64")  # JAX runs without x64


def _get(var: nnx.Variable) -> np.ndarray:
    return np.asarray(var[...])


def _set(var: nnx.Variable, value: np.ndarray) -> None:
    var.set_value(jnp.asarray(value, dtype=var[...].dtype))


class Rule:
    covers_children = True  # False: the rule handles the layer's own variables; its sublayers keep their rules

    def to_torch(self, layer: nnx.Module, kind: type = nnx.Variable) -> dict[str, np.ndarray]:
        """The layer's tensors under PyTorch names; `kind=nnx.Param` keeps parameters only."""
        raise NotImplementedError

    def to_flax(self, layer: nnx.Module, tensors: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


class Renames(Rule):
    """Each PyTorch tensor is one Flax variable, renamed and re-laid out: {torch_name: (flax_name, Layout)}."""

    def __init__(self, **names: str | tuple[str, Layout]):
        self.names = {t: (f, SAME) if isinstance(f, str) else f for t, f in names.items()}

    def _present(self, layer, kind=nnx.Variable):
        for torch_name, (flax_name, layout) in self.names.items():
            var = getattr(layer, flax_name, None)
            if isinstance(var, kind):  # optional parts (bias=False) are simply absent
                yield torch_name, var, layout

    def to_torch(self, layer, kind=nnx.Variable):
        return {t: layout.to_torch(_get(var)) for t, var, layout in self._present(layer, kind)}

    def to_flax(self, layer, tensors):
        for t, var, layout in self._present(layer):
            _set(var, layout.to_flax(tensors[t]))


class SameNames(Rule):
    """Layers whose Flax variables already carry PyTorch's names (the zoo's recurrent cells), each with a layout
    (default: the same shape)."""

    def __init__(self, **layouts: Layout):
        self.layouts = layouts

    def _variables(self, layer, kind=nnx.Variable):
        for name, var in vars(layer).items():
            if isinstance(var, (nnx.Param, nnx.BatchStat)) and isinstance(var, kind):
                yield name, var, self.layouts.get(name, SAME)

    def to_torch(self, layer, kind=nnx.Variable):
        return {name: layout.to_torch(_get(var)) for name, var, layout in self._variables(layer, kind)}

    def to_flax(self, layer, tensors):
        for name, var, layout in self._variables(layer):
            _set(var, layout.to_flax(tensors[name]))


class OwnParams(SameNames):
    """A module's own parameters beside its sublayers (ConvNeXt's `layer_scale`, ViT's `class_token`), under the
    same names; the sublayers convert by their own rules."""

    covers_children = False


class PackedAttention(Rule):
    """`torch.nn.MultiheadAttention` (packed `in_proj_weight` (3E, E), `out_proj`) <->
    `nnx.MultiHeadAttention` (`query/key/value.kernel` (E, H, D), `out.kernel` (H, D, E))."""

    parts = ("query", "key", "value")

    def to_torch(self, layer, kind=nnx.Variable):
        if not issubclass(nnx.Param, kind):
            return {}
        kernels = [_get(getattr(layer, p).kernel) for p in self.parts]  # (E, H, D) each
        e = kernels[0].shape[0]
        out = {"in_proj_weight": np.concatenate([k.reshape(e, -1).T for k in kernels], axis=0)}
        if layer.use_bias:
            out["in_proj_bias"] = np.concatenate([_get(getattr(layer, p).bias).reshape(-1) for p in self.parts])
        out_kernel = _get(layer.out.kernel)  # (H, D, E)
        out["out_proj.weight"] = out_kernel.reshape(-1, out_kernel.shape[-1]).T
        if layer.use_bias:
            out["out_proj.bias"] = _get(layer.out.bias)
        return out

    def to_flax(self, layer, tensors):
        h, d = layer.num_heads, layer.head_dim
        weights = np.split(tensors["in_proj_weight"], 3, axis=0)
        biases = np.split(tensors["in_proj_bias"], 3) if layer.use_bias else [None] * 3
        for part, w, b in zip(self.parts, weights, biases, strict=True):
            proj = getattr(layer, part)
            _set(proj.kernel, w.T.reshape(-1, h, d))
            if b is not None:
                _set(proj.bias, b.reshape(h, d))
        _set(layer.out.kernel, tensors["out_proj.weight"].T.reshape(h, d, -1))
        if layer.use_bias:
            _set(layer.out.bias, tensors["out_proj.bias"])


RULES: dict[type, Rule] = {}


def register_rule(layer_type: type, rule: Rule) -> None:
    """Teach the converter a new Flax layer kind (subclasses are matched too)."""
    RULES[layer_type] = rule


def rule_for(layer: nnx.Module) -> Rule | None:
    for cls in type(layer).__mro__:
        if cls in RULES:
            return RULES[cls]
    return None


def _register_builtin_rules() -> None:
    from ..flax_models import layers

    register_rule(nnx.Linear, Renames(weight=("kernel", LINEAR), bias="bias"))
    register_rule(nnx.Conv, Renames(weight=("kernel", CONV), bias="bias"))
    register_rule(nnx.Embed, Renames(weight="embedding"))
    register_rule(nnx.LayerNorm, Renames(weight="scale", bias="bias"))
    register_rule(
        layers.BatchNorm,
        Renames(weight="scale", bias="bias", running_mean="mean", running_var="var", num_batches_tracked=("num_batches_tracked", COUNTER)),
    )
    register_rule(nnx.MultiHeadAttention, PackedAttention())
    register_rule(layers.OwnParamsModule, OwnParams())  # its sublayers convert by their own rules
    register_rule(layers.RNN, SameNames())  # LSTM and GRU, parameters already in PyTorch's names


_register_builtin_rules()
