"""JAX / Flax NNX backend. Canonical batches are NumPy: images (N, H, W, C) float32, token ids (N, T) int; the
backend puts them on its device (default: JAX's default device) and brings results back to the host as NumPy."""

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
from . import Backend

NAME = "jax"


def parse_device(device) -> jax.Device | None:
    """`None`: JAX's default device; a jax.Device; or "cpu", "gpu" (also "cuda"), "tpu", with an index ("gpu:1")."""
    if device is None or isinstance(device, jax.Device):
        return device
    kind, _, index = str(device).partition(":")
    kind = {"cuda": "gpu"}.get(kind, kind)
    try:
        devices = jax.devices(kind)
    except RuntimeError:
        raise ValueError(f"device {device!r}: this JAX ({jax.__version__}) has no {kind} backend; it has {jax.devices()}") from None
    i = int(index or 0)
    if i >= len(devices):
        raise ValueError(f"device {device!r}: only {len(devices)} {kind} device(s) here: {devices}")
    return devices[i]


def device_of(model: nnx.Module) -> jax.Device | None:
    """The one device a model's parameters live on (None for a model without parameters)."""
    leaves = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
    if not leaves:
        return None
    devices = leaves[0].devices()
    if len(devices) != 1:
        raise ValueError(f"model parameters are spread over {len(devices)} devices; give the backend a device or mesh")
    return next(iter(devices))


def _put(obj, device) -> None:
    """Move a model's (or optimizer's) whole state to `device` in place."""
    if device is not None:
        nnx.update(obj, jax.device_put(nnx.state(obj), device))


@nnx.jit
def _forward(model, x):
    return model(x)


def _loss(model, x, y):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def _value_and_grad(model, x, y):
    return nnx.value_and_grad(_loss)(model, x, y)


def _pure_train_step(graphdef, state, x, y):
    """One step as a pure function of the (model, optimizer) state: merged inside the trace, so the object graph
    is walked once per compilation instead of on every call as `nnx.jit` does (about 2 ms per step on this CPU)."""
    model, optimizer = nnx.merge(graphdef, state)
    value, grads = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, optimizer.wrt))(model, x, y)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), value


# No buffer donation: arrays are immutable and shared freely (`nnx.clone`, NumPy views of CPU arrays), and a
# donated one would be deleted under whoever else holds it.
_train_step = jax.jit(_pure_train_step, static_argnums=0)


def _dotted(path) -> str:
    """A Flax state path -> the PyTorch module path it mirrors (`('blocks', 0, 'conv1')` -> `blocks.0.conv1`)."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


@dataclass(frozen=True)
class _Frozen:
    """nnx filter: parameters inside a frozen part (hashable, so compiled steps are shared)."""

    freeze: Any

    def __call__(self, path, value) -> bool:
        return self.freeze.is_frozen(_dotted(path))


class JaxBackend(Backend):
    NAME = NAME

    def __init__(self, spec: ModelSpec | None = None, device=None, rank: int = 0, world_size: int = 1):
        super().__init__(spec, parse_device(device), rank, world_size)

    @classmethod
    def for_model(cls, model: nnx.Module, spec: ModelSpec | None = None) -> JaxBackend:
        return cls(spec or model.zoo_spec, device_of(model))

    @staticmethod
    def framework_version() -> str:
        import flax

        return f"jax {jax.__version__}; flax {flax.__version__}"

    def build(self, spec: ModelSpec | None = None, seed: int = 0, source: str = "registry", **overrides) -> nnx.Module:
        spec = spec or self.spec
        cls = model_class(spec.arch, NAME, source)
        model = cls(**{**spec.config, **overrides}, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
        model.zoo_spec = spec
        model.eval()
        _put(model, self.device)
        return model

    def state_to_numpy(self, model: nnx.Module) -> dict[str, np.ndarray]:
        return convert.flax_to_torch(model)

    def load_numpy_state(self, model: nnx.Module, tensors: dict[str, np.ndarray], source: str) -> nnx.Module:
        device = self.device or device_of(model)  # the loaded arrays go where the model lives
        convert.torch_to_flax(tensors, model, source=source)
        _put(model, device)
        return model

    def to_input(self, batch: np.ndarray, spec: ModelSpec | None = None) -> jax.Array:
        dtype = jnp.float32 if (spec or self.spec_of(None)).preprocessing["kind"] == "image" else jnp.int32
        x = np.asarray(batch, dtype=dtype)
        return jax.device_put(x, self.device) if self.device is not None else jnp.asarray(x)

    def logits(self, model: nnx.Module, batch: np.ndarray) -> np.ndarray:
        return np.asarray(_forward(model, self.to_input(batch, self.spec_of(model))))

    def gradients(self, model: nnx.Module, batch: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Cross-entropy loss and its gradient for every parameter (PyTorch names), in train mode."""
        model.train()
        value, grads = _value_and_grad(model, self.to_input(batch, self.spec_of(model)), self.to_labels(labels))
        shadow = nnx.clone(model)
        nnx.update(shadow, grads)
        return float(value), convert.flax_to_torch(shadow, kind=nnx.Param)

    def to_labels(self, labels: np.ndarray) -> jax.Array:
        y = np.asarray(labels, np.int32)
        return jax.device_put(y, self.device) if self.device is not None else jnp.asarray(y)

    def train_mode(self, model: nnx.Module, freeze=None) -> None:
        """Train mode, except BatchNorm inside a frozen part, which keeps its running statistics."""
        model.train()
        if freeze is not None:
            for path, layer in nnx.iter_modules(model):
                if isinstance(layer, BatchNorm) and freeze.is_frozen(_dotted(path)):
                    layer.use_running_average = True

    def trainer(self, model: nnx.Module, cfg, freeze=None, backbone_lr_scale: float = 1.0) -> Trainer:
        return Trainer(self, model, cfg, freeze, backbone_lr_scale)

    def trainer_state(self, trainer: Trainer) -> tuple[dict[str, np.ndarray], dict]:
        """Everything needed to resume, on any device: weights, optimizer state, RNG streams (arrays), plus JSON."""
        tensors = {f"model.{k}": v for k, v in self.state_to_numpy(trainer.model).items()}
        tensors.update({f"optim/{k}": v for k, v in _flat(trainer.optimizer, nnx.Everything()).items()})
        tensors.update({f"rng/{k}": v for k, v in _flat(trainer.model, nnx.RngState).items()})
        return tensors, {"steps_done": trainer.steps_done}

    def restore_trainer_state(self, trainer: Trainer, tensors: dict[str, np.ndarray], meta: dict, source: str) -> None:
        device = self.device or device_of(trainer.model)
        self.load_numpy_state(trainer.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source)
        _restore_flat(trainer.optimizer, nnx.Everything(), tensors, "optim/", source)
        _restore_flat(trainer.model, nnx.RngState, tensors, "rng/", source)
        _put(trainer.model, device)
        _put(trainer.optimizer, device)
        trainer.steps_done = meta["steps_done"]


class Trainer:
    """Optimizer state plus the training step; `step` is the part a compiled variant replaces.
    `freeze` (zoo.train.freeze.Freeze): frozen parameters get no gradient and no optimizer state;
    `backbone_lr_scale` multiplies the learning rate of everything but the classifier head."""

    def __init__(self, backend: JaxBackend, model: nnx.Module, cfg, freeze=None, backbone_lr_scale: float = 1.0):
        from ..optim import optax_optimizer

        self.backend, self.model, self.cfg, self.freeze = backend, model, cfg, freeze
        wrt = nnx.Param if freeze is None or freeze.mode == "none" else nnx.All(nnx.Param, nnx.Not(_Frozen(freeze)))

        def scaled(params):  # the backbone: every trainable parameter outside the classifier head
            return jax.tree_util.tree_map_with_path(lambda path, _: not freeze.is_head(_dotted(path[:-1])), params)

        tx = optax_optimizer(cfg, scaled if freeze is not None else None, backbone_lr_scale)
        self.optimizer = nnx.Optimizer(model, tx, wrt=wrt)
        self.steps_done = 0
        backend.train_mode(model, freeze)  # the step's structure, train mode included, is fixed once here
        self._graphdef = nnx.graphdef((model, self.optimizer))

    def step(self, batch: np.ndarray, labels: np.ndarray) -> jax.Array:
        """One optimizer step; the loss stays on the device (`float(loss)` waits for it), so steps queue up
        without a host round trip. The model and optimizer are updated in place."""
        b = self.backend
        state, value = _train_step(self._graphdef, nnx.state((self.model, self.optimizer)),
                                   b.to_input(batch, b.spec_of(self.model)), b.to_labels(labels))
        nnx.update((self.model, self.optimizer), state)
        self.steps_done += 1
        return value


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


BACKEND_CLASS = JaxBackend
