"""JAX / Flax NNX adapter. Canonical batches are NumPy: images (N, H, W, C) float32, token ids (N, T) int."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import convert
from ..architectures import model_class
from ..flax_models.layers import BatchNorm
from ..registry import ModelSpec

NAME = "jax"


def framework_version() -> str:
    import flax

    return f"jax {jax.__version__}; flax {flax.__version__}"


def build(spec: ModelSpec, seed: int = 0, source: str = "registry", **overrides) -> nnx.Module:
    cls = model_class(spec.arch, NAME, source)
    model = cls(**{**spec.config, **overrides}, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    model.zoo_spec = spec
    model.eval()
    return model


def state_to_numpy(model: nnx.Module) -> dict[str, np.ndarray]:
    return convert.flax_to_torch(model)


def load_numpy_state(model: nnx.Module, tensors: dict[str, np.ndarray], source: str) -> nnx.Module:
    return convert.torch_to_flax(tensors, model, source=source)


def to_input(batch: np.ndarray, spec: ModelSpec) -> jax.Array:
    if spec.preprocessing["kind"] == "image":
        return jnp.asarray(batch, dtype=jnp.float32)
    return jnp.asarray(batch, dtype=jnp.int32)


@nnx.jit
def _forward(model, x):
    return model(x)


def logits(model: nnx.Module, batch: np.ndarray) -> np.ndarray:
    return np.asarray(_forward(model, to_input(batch, model.zoo_spec)))


def _loss(model, x, y):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def _value_and_grad(model, x, y):
    return nnx.value_and_grad(_loss)(model, x, y)


def gradients(model: nnx.Module, batch: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Cross-entropy loss and its gradient for every parameter (PyTorch names), in train mode."""
    model.train()
    value, grads = _value_and_grad(model, to_input(batch, model.zoo_spec), jnp.asarray(labels, jnp.int32))
    shadow = nnx.clone(model)
    nnx.update(shadow, grads)
    return float(value), convert.flax_to_torch(shadow, kind=nnx.Param)


@nnx.jit
def _train_step(model, optimizer, x, y):
    value, grads = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, optimizer.wrt))(model, x, y)
    optimizer.update(model, grads)
    return value


def _dotted(path) -> str:
    """A Flax state path -> the PyTorch module path it mirrors (`('blocks', 0, 'conv1')` -> `blocks.0.conv1`)."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


@dataclass(frozen=True)
class _Frozen:
    """nnx filter: parameters inside a frozen part (hashable, so compiled steps are shared)."""

    freeze: Any

    def __call__(self, path, value) -> bool:
        return self.freeze.is_frozen(_dotted(path))


def train_mode(model: nnx.Module, freeze=None) -> None:
    """Train mode, except BatchNorm inside a frozen part, which keeps its running statistics."""
    model.train()
    if freeze is not None:
        for path, layer in nnx.iter_modules(model):
            if isinstance(layer, BatchNorm) and freeze.is_frozen(_dotted(path)):
                layer.use_running_average = True


class Trainer:
    """Optimizer state plus the training step; `step` is the part a compiled variant replaces.
    `freeze` (zoo.train.freeze.Freeze): frozen parameters get no gradient and no optimizer state;
    `backbone_lr_scale` multiplies the learning rate of everything but the classifier head."""

    def __init__(self, model: nnx.Module, cfg, freeze=None, backbone_lr_scale: float = 1.0):
        from ..optim import optax_optimizer

        self.model, self.cfg, self.freeze = model, cfg, freeze
        wrt = nnx.Param if freeze is None or freeze.mode == "none" else nnx.All(nnx.Param, nnx.Not(_Frozen(freeze)))

        def scaled(params):  # the backbone: every trainable parameter outside the classifier head
            return jax.tree_util.tree_map_with_path(lambda path, _: not freeze.is_head(_dotted(path[:-1])), params)

        tx = optax_optimizer(cfg, scaled if freeze is not None else None, backbone_lr_scale)
        self.optimizer = nnx.Optimizer(model, tx, wrt=wrt)
        self.steps_done = 0

    def step(self, batch: np.ndarray, labels: np.ndarray) -> float:
        train_mode(self.model, self.freeze)
        value = _train_step(self.model, self.optimizer, to_input(batch, self.model.zoo_spec), jnp.asarray(labels, jnp.int32))
        self.steps_done += 1
        return float(value)


def _flat(obj, filt) -> dict[str, np.ndarray]:
    from flax.traverse_util import flatten_dict

    flat = flatten_dict(nnx.to_pure_dict(nnx.state(obj, filt)))
    out = {}
    for path, value in flat.items():
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)  # typed PRNG keys are stored as their raw uint32 data
        out["/".join(map(str, path))] = np.asarray(value)
    return out


def _restore_flat(obj, filt, tensors: dict[str, np.ndarray], prefix: str, source: str) -> None:
    from flax.traverse_util import flatten_dict, unflatten_dict

    state = nnx.state(obj, filt)
    template = flatten_dict(nnx.to_pure_dict(state))
    values = {}
    for path, old in template.items():
        key = prefix + "/".join(map(str, path))
        if key not in tensors:
            raise ValueError(f"{source}: training state lacks {key!r}")
        new = jnp.asarray(tensors[key])
        if jax.dtypes.issubdtype(old.dtype, jax.dtypes.prng_key):
            new = jax.random.wrap_key_data(new)
        values[path] = new
    nnx.replace_by_pure_dict(state, unflatten_dict(values))
    nnx.update(obj, state)


def trainer_state(trainer: Trainer) -> tuple[dict[str, np.ndarray], dict]:
    """Everything needed to resume: weights, optimizer state, RNG streams (arrays), plus JSON metadata."""
    tensors = {f"model.{k}": v for k, v in state_to_numpy(trainer.model).items()}
    tensors.update({f"optim/{k}": v for k, v in _flat(trainer.optimizer, nnx.Everything()).items()})
    tensors.update({f"rng/{k}": v for k, v in _flat(trainer.model, nnx.RngState).items()})
    return tensors, {"steps_done": trainer.steps_done}


def restore_trainer_state(trainer: Trainer, tensors: dict[str, np.ndarray], meta: dict, source: str) -> None:
    load_numpy_state(trainer.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source)
    _restore_flat(trainer.optimizer, nnx.Everything(), tensors, "optim/", source)
    _restore_flat(trainer.model, nnx.RngState, tensors, "rng/", source)
    trainer.steps_done = meta["steps_done"]
