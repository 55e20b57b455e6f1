"""PyTorch backend. Canonical batches are NumPy: images (N, H, W, C) float32, token ids (N, T) int; the
backend moves them to its device and brings results back to the host as NumPy."""

from __future__ import annotations

import numpy as np
import torch

from ..architectures import model_class
from ..checkpoint import check_tensors
from ..registry import ModelSpec
from . import Backend

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

    def trainer(self, model: torch.nn.Module, cfg, freeze=None, backbone_lr_scale: float = 1.0) -> Trainer:
        return Trainer(self, model, cfg, freeze, backbone_lr_scale)

    def trainer_state(self, trainer: Trainer) -> tuple[dict[str, np.ndarray], dict]:
        """Everything needed to resume, on any device: weights, optimizer state, RNG states (arrays), plus JSON."""
        tensors = {f"model.{k}": v for k, v in self.state_to_numpy(trainer.model).items()}
        opt = trainer.optimizer.state_dict()
        for index, slots in opt["state"].items():
            for key, value in slots.items():
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().numpy().copy()
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
    `backbone_lr_scale` multiplies the learning rate of everything but the classifier head."""

    def __init__(self, backend: TorchBackend, model: torch.nn.Module, cfg, freeze=None, backbone_lr_scale: float = 1.0):
        from ..optim import torch_optimizer

        self.backend, self.model, self.cfg, self.freeze = backend, model, cfg, freeze
        if backend.device.type == "cpu":
            # Denormal numbers make the LSTM backward ~10x slower on CPU (5.97 s -> 0.62 s per 64x256 step).
            torch.set_flush_denormal(True)
        groups: dict[float, list] = {}
        for name, p in unwrap(model).named_parameters():
            p.requires_grad_(freeze is None or not freeze.is_frozen(name))
            if p.requires_grad:
                head = freeze is None or freeze.is_head(name)
                groups.setdefault(1.0 if head else backbone_lr_scale, []).append(p)
        self.optimizer = torch_optimizer([{"params": ps, "lr_scale": scale} for scale, ps in groups.items()], cfg)
        self.steps_done = 0

    def step(self, batch: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        """One optimizer step; the loss stays on the device (`float(loss)` waits for it), so a GPU is not
        stalled by a host round trip every step."""
        from ..optim import clip_torch_gradients, set_torch_learning_rate

        set_torch_learning_rate(self.optimizer, self.cfg, self.steps_done)
        self.backend.train_mode(self.model, self.freeze)
        self.optimizer.zero_grad(set_to_none=True)
        value = self.backend.loss(self.model, batch, labels)
        value.backward()
        clip_torch_gradients([p for group in self.optimizer.param_groups for p in group["params"]], self.cfg)
        self.optimizer.step()
        self.steps_done += 1
        return value.detach()

BACKEND_CLASS = TorchBackend
