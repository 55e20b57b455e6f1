"""JAX / Flax NNX backend. Canonical batches are NumPy: images (N, H, W, C) float32, token ids (N, T) int; the
backend puts them on its device (default: JAX's default device) and brings results back to the host as NumPy."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from .. import convert
from ..architectures import model_class
from ..flax_models.layers import BatchNorm
from ..registry import ModelSpec
from . import Backend, micro_batches

NAME = "jax"
HEARTBEAT_TIMEOUT_S = 20  # a process silent this long is dead: jax.distributed stops the others (default 100 s)


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
    """Move a model's (or optimizer's) whole state to `device` (or a mesh's sharding) in place."""
    if isinstance(device, NamedSharding):
        nnx.update(obj, jax.tree.map(lambda x: _put_array(x, device), nnx.state(obj)))
    elif device is not None:
        nnx.update(obj, jax.device_put(nnx.state(obj), device))


def _put_array(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    """One array onto a mesh; typed PRNG keys (dropout's) as their raw data, which device_put takes across processes."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jax.device_put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)


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


def _pure_accumulating_step(graphdef, state, xs, ys):
    """`_pure_train_step` over micro-batches (`xs`: (N, B/N, ...)): their gradients averaged, then one update.
    Unrolled (N is small), so each micro-batch is the same program as a plain step's."""
    model, optimizer = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, optimizer.wrt))
    parts = xs.shape[0]
    total, grads = None, None
    for i in range(parts):
        value, g = grad_fn(model, xs[i], ys[i])
        total = value / parts if total is None else total + value / parts
        grads = jax.tree.map(lambda a: a / parts, g) if grads is None else jax.tree.map(lambda a, b: a + b / parts, grads, g)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), total


# No buffer donation: arrays are immutable and shared freely (`nnx.clone`, NumPy views of CPU arrays), and a
# donated one would be deleted under whoever else holds it.
_train_step = jax.jit(_pure_train_step, static_argnums=0)
_accumulating_step = jax.jit(_pure_accumulating_step, static_argnums=0)


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
    """`mesh` (data-parallel runs, see `start_data_parallel`): parameters are replicated over its devices and
    training batches split over its 'data' axis; rank and world size are the process's index and count."""

    NAME = NAME

    def __init__(self, spec: ModelSpec | None = None, device=None, rank: int = 0, world_size: int = 1, mesh=None):
        super().__init__(spec, parse_device(device), rank, world_size)
        self.mesh = mesh

    @property
    def placement(self):
        """Where models and inputs go: the device, or every device of the mesh (replicated)."""
        return NamedSharding(self.mesh, P()) if self.mesh is not None else self.device

    @property
    def shards(self) -> int:
        """How many equal parts each global batch is cut into: one per device of the mesh."""
        return self.mesh.size if self.mesh is not None else 1

    def barrier(self) -> None:
        if self.world_size > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("zoo")

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
        _put(model, self.placement)
        return model

    def state_to_numpy(self, model: nnx.Module) -> dict[str, np.ndarray]:
        return convert.flax_to_torch(model)

    def load_numpy_state(self, model: nnx.Module, tensors: dict[str, np.ndarray], source: str) -> nnx.Module:
        placement = self.placement or device_of(model)  # the loaded arrays go where the model lives
        convert.torch_to_flax(tensors, model, source=source)
        _put(model, placement)
        return model

    def to_input(self, batch: np.ndarray, spec: ModelSpec | None = None) -> jax.Array:
        """A whole batch on the device (data-parallel: on every device, as each process holds it all)."""
        dtype = jnp.float32 if (spec or self.spec_of(None)).preprocessing["kind"] == "image" else jnp.int32
        return self._place(np.asarray(batch, dtype=dtype), P())

    def to_shards(self, batch: np.ndarray, spec: ModelSpec | None = None, micro_axis: bool = False) -> jax.Array:
        """This process's slice of a global training batch as one array whose batch axis is split over the
        mesh's 'data' axis (after a leading micro-batch axis with `micro_axis`); labels when `spec` is None."""
        image = spec is not None and spec.preprocessing["kind"] == "image"
        return self._place(np.asarray(batch, dtype=np.float32 if image else np.int32), P(None, "data") if micro_axis else P("data"))

    def _place(self, x: np.ndarray, partition: P) -> jax.Array:
        if self.mesh is not None:  # each process gives its own data: its slice, or (replicated) the whole
            return jax.make_array_from_process_local_data(NamedSharding(self.mesh, partition), x)
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
        return self._place(np.asarray(labels, np.int32), P())

    def train_mode(self, model: nnx.Module, freeze=None) -> None:
        """Train mode, except BatchNorm inside a frozen part, which keeps its running statistics."""
        model.train()
        if freeze is not None:
            for path, layer in nnx.iter_modules(model):
                if isinstance(layer, BatchNorm) and freeze.is_frozen(_dotted(path)):
                    layer.use_running_average = True

    def trainer(self, model: nnx.Module, cfg, freeze=None, backbone_lr_scale: float = 1.0, grad_accum: int = 1) -> Trainer:
        return Trainer(self, model, cfg, freeze, backbone_lr_scale, grad_accum)

    def trainer_state(self, trainer: Trainer) -> tuple[dict[str, np.ndarray], dict]:
        """Everything needed to resume, on any device: weights, optimizer state, RNG streams (arrays), plus JSON."""
        tensors = {f"model.{k}": v for k, v in self.state_to_numpy(trainer.model).items()}
        tensors.update({f"optim/{k}": v for k, v in _flat(trainer.optimizer, nnx.Everything()).items()})
        tensors.update({f"rng/{k}": v for k, v in _flat(trainer.model, nnx.RngState).items()})
        return tensors, {"steps_done": trainer.steps_done}

    def restore_trainer_state(self, trainer: Trainer, tensors: dict[str, np.ndarray], meta: dict, source: str) -> None:
        placement = self.placement or device_of(trainer.model)
        self.load_numpy_state(trainer.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source)
        _restore_flat(trainer.optimizer, nnx.Everything(), tensors, "optim/", source)
        _restore_flat(trainer.model, nnx.RngState, tensors, "rng/", source)
        _put(trainer.model, placement)
        _put(trainer.optimizer, placement)
        trainer.steps_done = meta["steps_done"]


class Trainer:
    """Optimizer state plus the training step; `step` is the part a compiled variant replaces.
    `freeze` (zoo.train.freeze.Freeze): frozen parameters get no gradient and no optimizer state;
    `backbone_lr_scale` multiplies the learning rate of everything but the classifier head; `grad_accum`
    micro-batches per step. On a mesh the same jitted step runs over the sharded batch: XLA averages the
    gradients and BatchNorm's statistics over all devices."""

    def __init__(self, backend: JaxBackend, model: nnx.Module, cfg, freeze=None, backbone_lr_scale: float = 1.0,
                 grad_accum: int = 1):
        from ..optim import optax_optimizer

        self.backend, self.model, self.cfg, self.freeze, self.grad_accum = backend, model, cfg, freeze, grad_accum
        wrt = nnx.Param if freeze is None or freeze.mode == "none" else nnx.All(nnx.Param, nnx.Not(_Frozen(freeze)))

        def scaled(params):  # the backbone: every trainable parameter outside the classifier head
            return jax.tree_util.tree_map_with_path(lambda path, _: not freeze.is_head(_dotted(path[:-1])), params)

        tx = optax_optimizer(cfg, scaled if freeze is not None else None, backbone_lr_scale)
        if backend.mesh is not None:
            _put(model, backend.placement)
        self.optimizer = nnx.Optimizer(model, tx, wrt=wrt)
        if backend.mesh is not None:
            _put(self.optimizer, backend.placement)
        self.steps_done = 0
        backend.train_mode(model, freeze)  # the step's structure, train mode included, is fixed once here
        self._graphdef = nnx.graphdef((model, self.optimizer))

    def step(self, batch: np.ndarray, labels: np.ndarray) -> jax.Array:
        """One optimizer step over this process's batch (in `grad_accum` micro-batches); the loss stays on the
        device (`float(loss)` waits for it), so steps queue up without a host round trip. The model and
        optimizer are updated in place."""
        b, spec = self.backend, self.backend.spec_of(self.model)
        state = nnx.state((self.model, self.optimizer))
        if self.grad_accum == 1:
            state, value = _train_step(self._graphdef, state, b.to_shards(batch, spec), b.to_shards(labels))
        else:
            parts = micro_batches(len(labels), self.grad_accum)
            xs, ys = np.stack([batch[p] for p in parts]), np.stack([labels[p] for p in parts])
            state, value = _accumulating_step(self._graphdef, state, b.to_shards(xs, spec, micro_axis=True),
                                              b.to_shards(ys, micro_axis=True))
        nnx.update((self.model, self.optimizer), state)
        self.steps_done += 1
        return value


def start_data_parallel(device=None) -> dict:
    """A one-axis ('data') mesh over every device the JAX runtime sees, after `jax.distributed.initialize`
    when several processes are described: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
    (`zoo train --coordinator-address --num-processes --process-id`), or a SLURM job of several tasks, which
    JAX reads itself. Returns the backend's rank (process index), world size (process count) and mesh."""
    env = os.environ
    if not jax.distributed.is_initialized() and (env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("JAX_NUM_PROCESSES", "1")) > 1
                                                 or int(env.get("SLURM_NTASKS", "1")) > 1):
        number, index = env.get("JAX_NUM_PROCESSES"), env.get("JAX_PROCESS_ID")
        jax.distributed.initialize(num_processes=int(number) if number else None, process_id=int(index) if index else None,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
    if device is not None and ":" in str(device):
        raise ValueError(f"device {device!r}: a distributed run uses every device of its kind; give --device gpu (or cpu)")
    devices = jax.devices(parse_device(device).platform) if device is not None else jax.devices()
    # Auto: the compiler propagates the shardings through the unchanged step (Explicit, make_mesh's default, would
    # ask every reshape for its output's sharding)
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
    return {"rank": jax.process_index(), "world_size": jax.process_count(), "mesh": mesh}


def stop_data_parallel() -> None:
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


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
