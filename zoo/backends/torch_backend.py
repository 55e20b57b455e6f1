"""PyTorch adapter. Canonical batches are NumPy: images (N, H, W, C) float32, token ids (N, T) int."""

from __future__ import annotations

import numpy as np
import torch

from ..architectures import model_class
from ..checkpoint import check_tensors
from ..registry import ModelSpec

NAME = "torch"


def framework_version() -> str:
    return f"torch {torch.__version__}"


def build(spec: ModelSpec, seed: int = 0, source: str = "registry", **overrides) -> torch.nn.Module:
    cls = model_class(spec.arch, NAME, source)
    torch.manual_seed(seed)
    model = cls(**{**spec.config, **overrides})
    model.zoo_spec = spec
    return model.eval()


def state_to_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy_state(model: torch.nn.Module, tensors: dict[str, np.ndarray], source: str) -> torch.nn.Module:
    expected = {k: (tuple(v.shape), np.dtype(str(v.dtype).replace("torch.", ""))) for k, v in model.state_dict().items()}
    check_tensors(expected, tensors, source)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=True)
    return model


def to_input(batch: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    if spec.preprocessing["kind"] == "image":
        return torch.from_numpy(batch.transpose(0, 3, 1, 2).copy(order="C"))  # NHWC -> NCHW, plain strides even for C=1
    return torch.from_numpy(np.asarray(batch, dtype=np.int64))


def logits(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(to_input(batch, model.zoo_spec)).numpy()


def loss(model: torch.nn.Module, batch: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    out = model(to_input(batch, model.zoo_spec))
    return torch.nn.functional.cross_entropy(out, torch.from_numpy(np.asarray(labels, np.int64)))


def gradients(model: torch.nn.Module, batch: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Cross-entropy loss and its gradient for every parameter (PyTorch names), in train mode."""
    model.train()
    model.zero_grad(set_to_none=True)
    value = loss(model, batch, labels)
    value.backward()
    return float(value.detach()), {k: p.grad.numpy().copy() for k, p in model.named_parameters()}


def train_mode(model: torch.nn.Module, freeze=None) -> None:
    """Train mode, except BatchNorm inside a frozen part, which keeps its running statistics."""
    model.train()
    if freeze is not None:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and freeze.is_frozen(name):
                module.eval()


class Trainer:
    """Optimizer state plus the training step; `step` is the part a compiled variant replaces.
    `freeze` (zoo.train.freeze.Freeze): frozen parameters get no gradient and no optimizer state;
    `backbone_lr_scale` multiplies the learning rate of everything but the classifier head."""

    def __init__(self, model: torch.nn.Module, cfg, freeze=None, backbone_lr_scale: float = 1.0):
        from ..optim import torch_optimizer

        self.model, self.cfg, self.freeze = model, cfg, freeze
        if next(model.parameters()).device.type == "cpu":
            # Denormal numbers make the LSTM backward ~10x slower on CPU (5.97 s -> 0.62 s per 64x256 step).
            torch.set_flush_denormal(True)
        groups: dict[float, list] = {}
        for name, p in model.named_parameters():
            p.requires_grad_(freeze is None or not freeze.is_frozen(name))
            if p.requires_grad:
                head = freeze is None or freeze.is_head(name)
                groups.setdefault(1.0 if head else backbone_lr_scale, []).append(p)
        self.optimizer = torch_optimizer([{"params": ps, "lr_scale": scale} for scale, ps in groups.items()], cfg)
        self.steps_done = 0

    def step(self, batch: np.ndarray, labels: np.ndarray) -> float:
        from ..optim import set_torch_learning_rate

        set_torch_learning_rate(self.optimizer, self.cfg, self.steps_done)
        train_mode(self.model, self.freeze)
        self.optimizer.zero_grad(set_to_none=True)
        value = loss(self.model, batch, labels)
        value.backward()
        self.optimizer.step()
        self.steps_done += 1
        return float(value.detach())


def trainer_state(trainer: Trainer) -> tuple[dict[str, np.ndarray], dict]:
    """Everything needed to resume: weights, optimizer state, RNG state (arrays), plus JSON metadata."""
    tensors = {f"model.{k}": v for k, v in state_to_numpy(trainer.model).items()}
    opt = trainer.optimizer.state_dict()
    for index, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().numpy().copy()
    tensors["rng.torch"] = torch.get_rng_state().numpy().copy()
    return tensors, {"param_groups": opt["param_groups"], "steps_done": trainer.steps_done}


def restore_trainer_state(trainer: Trainer, tensors: dict[str, np.ndarray], meta: dict, source: str) -> None:
    load_numpy_state(trainer.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, slot = key.split(".", 2)
            state.setdefault(int(index), {})[slot] = torch.from_numpy(np.array(value))
    trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(torch.from_numpy(np.array(tensors["rng.torch"])))
    trainer.steps_done = meta["steps_done"]
