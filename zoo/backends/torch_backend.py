"""PyTorch backend. Canonical batches are NumPy: images (N, H, W, C) float32, token ids (N, T) int; the
backend moves them to its device and brings results back to the host as NumPy."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from ..architectures import model_class
from ..checkpoint import check_tensors
from ..registry import ModelSpec
from . import Backend, micro_batches

NAME = "torch"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside `torch.compile` (`_orig_mod`) and DDP/DataParallel (`module`) wrappers, so state
    dicts keep the plain PyTorch names."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def parse_device(device) -> torch.device:
    """`None` -> CPU; "cpu", "cuda", "cuda:1", "mps" or a torch.device, checked against what this machine has."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: this PyTorch ({torch.__version__}) sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def device_of(model: torch.nn.Module) -> torch.device:
    first = next(iter(unwrap(model).parameters()), None)
    return first.device if first is not None else torch.device("cpu")


class TorchBackend(Backend):
    NAME = NAME

    def __init__(self, spec: ModelSpec | None = None, device=None, rank: int = 0, world_size: int = 1):
        super().__init__(spec, parse_device(device), rank, world_size)

    @classmethod
    def for_model(cls, model: torch.nn.Module, spec: ModelSpec | None = None) -> TorchBackend:
        return cls(spec or unwrap(model).zoo_spec, device_of(model))

    @staticmethod
    def framework_version() -> str:
        return f"torch {torch.__version__}"

    @property
    def shards(self) -> int:
        """How many equal parts each global batch is cut into: one per rank."""
        return self.world_size

    def mean_over_ranks(self, value: float) -> float:
        """The mean of a per-rank figure (a rank's mean training loss) over all ranks: the global batch's."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        total = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(total)
        return float(total) / self.world_size

    def barrier(self) -> None:
        """Wait for every rank (rank 0 writes the files the others read next)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def build(self, spec: ModelSpec | None = None, seed: int = 0, source: str = "registry", **overrides) -> torch.nn.Module:
        spec = spec or self.spec
        cls = model_class(spec.arch, NAME, source)
        torch.manual_seed(seed)
        model = cls(**{**spec.config, **overrides})
        model.zoo_spec = spec
        return model.to(self.device).eval()

    def state_to_numpy(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in unwrap(model).state_dict().items()}

    def load_numpy_state(self, model: torch.nn.Module, tensors: dict[str, np.ndarray], source: str) -> torch.nn.Module:
        plain = unwrap(model)
        expected = {k: (tuple(v.shape), np.dtype(str(v.dtype).replace("torch.", ""))) for k, v in plain.state_dict().items()}
        check_tensors(expected, tensors, source)
        plain.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=True)  # copied to its device
        return model

    def to_input(self, batch: np.ndarray, spec: ModelSpec | None = None) -> torch.Tensor:
        if (spec or self.spec_of(None)).preprocessing["kind"] == "image":
            x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy(order="C"))  # NHWC -> NCHW, plain strides even for C=1
        else:
            x = torch.from_numpy(np.asarray(batch, dtype=np.int64))
        return x.to(self.device)

    def logits(self, model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(self.to_input(batch, self.spec_of(model))).cpu().numpy()

    def loss(self, model: torch.nn.Module, batch: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        out = model(self.to_input(batch, self.spec_of(model)))
        return torch.nn.functional.cross_entropy(out, torch.from_numpy(np.asarray(labels, np.int64)).to(self.device))

    def gradients(self, model: torch.nn.Module, batch: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Cross-entropy loss and its gradient for every parameter (PyTorch names), in train mode."""
        model.train()
        model.zero_grad(set_to_none=True)
        value = self.loss(model, batch, labels)
        value.backward()
        return float(value.detach()), {k: p.grad.cpu().numpy().copy() for k, p in unwrap(model).named_parameters()}

    def train_mode(self, model: torch.nn.Module, freeze=None) -> None:
        """Train mode, except BatchNorm inside a frozen part, which keeps its running statistics."""
        model.train()
        if freeze is not None:
            for name, module in unwrap(model).named_modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and freeze.is_frozen(name):
                    module.eval()

    def trainer(self, model: torch.nn.Module, cfg, freeze=None, backbone_lr_scale: float = 1.0, grad_accum: int = 1) -> Trainer:
        return Trainer(self, model, cfg, freeze, backbone_lr_scale, grad_accum)

    def trainer_state(self, trainer: Trainer) -> tuple[dict[str, np.ndarray], dict]:
        """Everything needed to resume, on any device: weights, optimizer state, RNG states (arrays), plus JSON."""
        tensors = {f"model.{k}": v for k, v in self.state_to_numpy(trainer.model).items()}
        opt = trainer.optimizer.state_dict()
        for index, slots in opt["state"].items():
            for key, value in slots.items():
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().numpy().copy()
        # Rank 0's generators stand for every rank's: all start from the same seed and draw alike (equal slices).
        tensors["rng.torch"] = torch.get_rng_state().numpy().copy()
        if self.device.type == "cuda":  # dropout on the GPU draws from its own generator
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device).numpy().copy()
        return tensors, {"param_groups": opt["param_groups"], "steps_done": trainer.steps_done}

    def restore_trainer_state(self, trainer: Trainer, tensors: dict[str, np.ndarray], meta: dict, source: str) -> None:
        self.load_numpy_state(trainer.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, slot = key.split(".", 2)
                state.setdefault(int(index), {})[slot] = torch.from_numpy(np.array(value))
        # Optimizer.load_state_dict moves each state tensor to its parameter's device
        trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(torch.from_numpy(np.array(tensors["rng.torch"])))
        if self.device.type == "cuda" and "rng.cuda" in tensors:  # resumed from a CPU run: the GPU stream starts fresh
            torch.cuda.set_rng_state(torch.from_numpy(np.array(tensors["rng.cuda"])), self.device)
        trainer.steps_done = meta["steps_done"]


class Trainer:
    """Optimizer state plus the training step; `step` is the part a compiled variant replaces.
    `freeze` (zoo.train.freeze.Freeze): frozen parameters get no gradient and no optimizer state;
    `backbone_lr_scale` multiplies the learning rate of everything but the classifier head; `grad_accum`
    micro-batches per step. With several ranks, `network` is the model inside DistributedDataParallel
    (`model` stays the plain module: evaluation and checkpoints use it)."""

    def __init__(self, backend: TorchBackend, model: torch.nn.Module, cfg, freeze=None, backbone_lr_scale: float = 1.0,
                 grad_accum: int = 1):
        from ..optim import torch_optimizer

        self.backend, self.model, self.cfg, self.freeze, self.grad_accum = backend, model, cfg, freeze, grad_accum
        if backend.device.type == "cpu":
            # Denormal numbers make the LSTM backward ~10x slower on CPU (5.97 s -> 0.62 s per 64x256 step).
            torch.set_flush_denormal(True)
        groups: dict[float, list] = {}
        for name, p in unwrap(model).named_parameters():
            p.requires_grad_(freeze is None or not freeze.is_frozen(name))
            if p.requires_grad:
                head = freeze is None or freeze.is_head(name)
                groups.setdefault(1.0 if head else backbone_lr_scale, []).append(p)
        self.network = distributed_data_parallel(model, backend) if backend.world_size > 1 else model
        self.optimizer = torch_optimizer([{"params": ps, "lr_scale": scale} for scale, ps in groups.items()], cfg)
        self.steps_done = 0

    def step(self, batch: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        """One optimizer step over this rank's batch, in `grad_accum` micro-batches whose losses are weighted by
        their share of the batch (the gradient is the whole batch's); DDP averages the ranks' gradients once,
        after the last. The loss stays on the device (`float(loss)` waits for it), so a GPU is not stalled by a
        host round trip every step."""
        from ..optim import clip_torch_gradients, set_torch_learning_rate

        set_torch_learning_rate(self.optimizer, self.cfg, self.steps_done)
        self.backend.train_mode(self.network, self.freeze)
        self.optimizer.zero_grad(set_to_none=True)
        parts = micro_batches(len(labels), self.grad_accum)
        values = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            with contextlib.nullcontext() if last or self.network is self.model else self.network.no_sync():
                value = self.backend.loss(self.network, batch[part], labels[part]) * (1.0 / len(parts))
                value.backward()
            values.append(value.detach())
        clip_torch_gradients([p for group in self.optimizer.param_groups for p in group["params"]], self.cfg)
        self.optimizer.step()
        self.steps_done += 1
        return torch.stack(values).sum()


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are the global batch's, summed over all ranks with differentiable
    all-reduces (torch.distributed.nn), for gloo on the CPU, where `torch.nn.SyncBatchNorm` refuses to run.
    Two passes (mean, then squared deviations from it), as a single process computes them; the same parameters,
    buffers and state-dict names as the BatchNorm it replaces; in eval mode it is that BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats) or not self.affine:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        sums = all_reduce(torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)  # unbiased, as BatchNorm keeps
        return centred * torch.rsqrt(var + self.eps).view(shape) * self.weight.view(shape) + self.bias.view(shape)


def global_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Every BatchNorm in `module` as a GlobalBatchNorm sharing its parameters and buffers (in place below the
    top; returns the top), as `torch.nn.SyncBatchNorm.convert_sync_batchnorm` does for CUDA."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var, new.num_batches_tracked = module.running_mean, module.running_var, module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, global_batchnorm(child))
    return module


def distributed_data_parallel(model: torch.nn.Module, backend: TorchBackend) -> torch.nn.parallel.DistributedDataParallel:
    """The model in DDP over the process group, with BatchNorm statistics over the global batch (as JAX's
    data-parallel step computes them): SyncBatchNorm on CUDA, GlobalBatchNorm on the CPU. Buffers are not
    broadcast: global statistics already keep every rank's running averages equal."""
    if backend.device.type == "cuda":
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[backend.device.index or torch.cuda.current_device()],
                                                         broadcast_buffers=False)
    return torch.nn.parallel.DistributedDataParallel(global_batchnorm(model), broadcast_buffers=False)


def start_data_parallel(device=None) -> dict:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK): NCCL
    when training on CUDA, each process on GPU LOCAL_RANK; gloo on the CPU. Returns the backend's rank and world size."""
    import torch.distributed as dist

    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"distributed torch training runs under torchrun (torchrun --nproc_per_node=N -m zoo.cli train "
                           f"... --distributed): {', '.join(missing)} not set")
    cuda = parse_device(device).type == "cuda"
    if cuda:
        if parse_device(device).index is not None:
            raise ValueError(f"device {device!r}: a distributed run takes GPU LOCAL_RANK on each node; give --device cuda")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return {"rank": dist.get_rank(), "world_size": dist.get_world_size()}


def stop_data_parallel() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


BACKEND_CLASS = TorchBackend
