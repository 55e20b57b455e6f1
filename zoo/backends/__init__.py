"""One backend class per framework behind one small protocol (`Backend`), so the API, tests and training code
are written once. A backend object holds what a run needs to know and a wrapped model cannot be asked: the
spec, the device, and (for data-parallel runs) rank and world size. It builds models, moves canonical NumPy
batches to its device, runs them, and exports/loads the canonical state dict (wrappers unwrapped)."""

from __future__ import annotations

import importlib
from typing import Any

ALIASES = {"torch": "torch", "pytorch": "torch", "jax": "jax", "flax": "jax"}
BACKENDS = ("torch", "jax")


class Backend:
    """The protocol both frameworks implement (`TorchBackend`, `JaxBackend`):

    build(spec, seed, source) -> model on the device      state_to_numpy(model) / load_numpy_state(model, tensors, source)
    to_input(batch[, spec]) -> framework array on device  logits(model, batch) -> NumPy on the host
    gradients(model, batch, labels)                        train_mode(model, freeze)
    trainer(model, cfg, freeze, backbone_lr_scale, grad_accum)  trainer_state(trainer) / restore_trainer_state(...)
    framework_version(); for_model(model) builds the backend that matches a loaded model (its spec and device).
    Data-parallel runs: shards (equal parts of each global batch), mean_over_ranks(value), barrier()."""

    NAME = ""

    def __init__(self, spec, device, rank: int = 0, world_size: int = 1):
        self.spec, self.device, self.rank, self.world_size = spec, device, rank, world_size

    def spec_of(self, model) -> Any:
        """The spec this backend holds, else the model's own `zoo_spec` (looked up through wrappers)."""
        if self.spec is not None:
            return self.spec
        spec = getattr(unwrap(model), "zoo_spec", None) if model is not None else None
        if spec is None:
            raise ValueError(f"{self.NAME} backend: no spec given and the model has no .zoo_spec; "
                             "pass spec= (zoo.registry.get_spec(NAME) describes a registry model)")
        return spec

    @property
    def shards(self) -> int:
        """How many equal parts a data-parallel step cuts each global batch into (ranks, or devices)."""
        return 1

    def mean_over_ranks(self, value: float) -> float:
        """A per-rank figure averaged over ranks; a single process, or one program over all processes, has one."""
        return value

    def barrier(self) -> None:
        """Wait for every rank; nothing to wait for in a single process."""

    def __repr__(self) -> str:
        spec = self.spec.name if self.spec is not None else None
        return f"{type(self).__name__}(spec={spec!r}, device={str(self.device)!r}, rank={self.rank}, world_size={self.world_size})"


def canonical_backend(backend: str) -> str:
    try:
        return ALIASES[backend.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"Unknown backend {backend!r}; use 'torch' or 'jax'") from None


def get_backend(backend: str, spec=None, device=None, **parallel) -> Backend:
    """A backend object: `get_backend("torch", spec, device="cuda")`; without a spec it uses each model's own.
    `parallel`: what `start_data_parallel` returned (rank, world size; JAX's mesh)."""
    name = canonical_backend(backend)
    module = importlib.import_module(f"zoo.backends.{name}_backend")
    return module.BACKEND_CLASS(spec=spec, device=device, **parallel)


def start_data_parallel(backend: str, device=None) -> dict:
    """Join the run's other processes (torch: the process group torchrun describes; JAX: jax.distributed, when
    several processes are described, and a mesh over every device) and return `get_backend`'s `parallel`."""
    module = importlib.import_module(f"zoo.backends.{canonical_backend(backend)}_backend")
    return module.start_data_parallel(device)


def stop_data_parallel(backend: str) -> None:
    """Leave the process group (torch) or the distributed runtime (JAX) that `start_data_parallel` joined."""
    importlib.import_module(f"zoo.backends.{canonical_backend(backend)}_backend").stop_data_parallel()


def micro_batches(n: int, parts: int) -> list[slice]:
    """`parts` equal slices of a batch of `n` (gradient accumulation); a batch that does not divide is refused."""
    if n % parts:
        raise ValueError(f"a batch of {n} does not split into {parts} equal micro-batches")
    size = n // parts
    return [slice(i * size, (i + 1) * size) for i in range(parts)]


def backend_of(model) -> str:
    """'torch' or 'jax' for a model object (wrappers included), without importing a framework that is not loaded."""
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root == "torch":
            return "torch"
        if root == "flax":
            return "jax"
    raise TypeError(f"{type(model).__name__} is neither a torch.nn.Module nor a flax.nnx.Module")


def backend_for(model, spec=None) -> Backend:
    """The backend object matching a loaded model: its framework, its spec and the device its weights are on."""
    module = importlib.import_module(f"zoo.backends.{backend_of(model)}_backend")
    return module.BACKEND_CLASS.for_model(model, spec)


def unwrap(model):
    """The plain model inside framework wrappers (`torch.compile`, DDP); Flax models are returned as they are."""
    if backend_of(model) == "torch":
        from .torch_backend import unwrap as unwrap_torch

        return unwrap_torch(model)
    return model
