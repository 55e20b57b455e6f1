"""`zoo.load`, `zoo.save`, `zoo.pipeline`: the same calls for both backends."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .backends import backend_for, backend_of, canonical_backend, get_backend, unwrap
from .checkpoint import Checkpoint, CheckpointError, make_metadata, read_checkpoint, write_checkpoint
from .fetch import download, parse_hub_name, resolve_weights_file  # noqa: F401 (zoo.api.resolve_weights_file)
from .registry import ModelSpec


def _is_hub(name: str) -> bool:
    return name.startswith(("hf-hub:", "hf_hub:"))


def _is_path(name: str) -> bool:
    return name.startswith("file://") or name.endswith(".safetensors") or os.sep in name or os.path.exists(name)


def spec_from_checkpoint(ckpt: Checkpoint) -> ModelSpec:
    return ModelSpec(
        name=ckpt.model or ckpt.arch,
        arch=ckpt.arch,
        config=ckpt.config,
        preprocessing=ckpt.preprocessing,
        labels=ckpt.labels,
        task=ckpt.metadata.get("task", ""),
        dataset=ckpt.metadata.get("dataset", ""),
        tokenizer_json=ckpt.tokenizer_json,
        classifier=ckpt.metadata.get("classifier") or _registry_classifier(ckpt.arch, ckpt.model),
        finetuned_from=ckpt.metadata.get("finetuned_from"),
    )


def _registry_classifier(arch: str, model: str) -> str:
    """Files written before checkpoints named their head: the registry's entry for that model, if any."""
    if model in registry.list_models() and registry.get_spec(model).arch == arch:
        return registry.get_spec(model).classifier
    return ""


def load_checkpoint_for(name_or_path: str, pretrained: bool = True) -> tuple[ModelSpec, Checkpoint | None]:
    """The spec and (when weights are wanted) the verified checkpoint behind a name, a Hub id or a path."""
    if _is_hub(name_or_path):
        ckpt = read_checkpoint(download(*parse_hub_name(name_or_path)))
        return spec_from_checkpoint(ckpt), ckpt
    if _is_path(name_or_path):
        path = name_or_path.removeprefix("file://")
        ckpt = read_checkpoint(path)
        return spec_from_checkpoint(ckpt), ckpt
    base, tag = registry.split_tag(name_or_path)
    spec = registry.get_spec(base)
    if not pretrained:
        return spec, None
    ckpt = read_checkpoint(resolve_weights_file(base, tag))
    if ckpt.arch != spec.arch or ckpt.config != spec.config or ckpt.preprocessing != spec.preprocessing:
        raise CheckpointError(f"{ckpt.path}: holds architecture {ckpt.arch!r} {ckpt.config} with preprocessing {ckpt.preprocessing}, "
                              f"but {base} is {spec.arch!r} {spec.config} with {spec.preprocessing}")
    return spec.replace(tokenizer_json=ckpt.tokenizer_json or spec.tokenizer_json), ckpt


def load(name_or_path: str, backend: str = "torch", pretrained: bool = True, seed: int = 0, *,
         num_classes: int | None = None, labels: list[str] | None = None, device: Any = None, **overrides: Any):
    """A ready model: `torch.nn.Module` (backend="torch") or `flax.nnx.Module` (backend="jax"), in eval
    mode, with `.zoo_spec` describing exactly the model built (config, labels, preprocessing, tokenizer,
    origin). `name_or_path` is a registry name (`cnn-mnist`, `cnn-mnist.TAG`), a Hub repo
    (`hf-hub:ORG/REPO[@REVISION]`), a `.safetensors` path or a `file://` URL. `pretrained=False` gives the
    framework's own random initialisation (seeded by `seed`). `device`: where the weights live ("cpu", "cuda",
    "cuda:1" for torch, default CPU; "cpu", "gpu", "gpu:1" or a jax.Device for JAX, default JAX's default device).

    `labels=[...]` or `num_classes=K` give the pretrained model a new classifier head: every other tensor
    loads strictly, the head (the spec's `classifier` prefix) keeps its fresh, seeded initialisation, and
    `zoo_spec.finetuned_from` names the weights it came from. The same labels in another order permute the
    head's rows instead. `overrides` change other config values (e.g. `dropout=0.0`) where the weights allow."""
    b = get_backend(backend, device=device)
    spec, ckpt = load_checkpoint_for(name_or_path, pretrained)
    source = ckpt.path if ckpt else spec.name
    spec, tensors = _with_head(spec, ckpt, name_or_path, num_classes, labels)
    spec = spec.replace(config={**spec.config, **overrides})
    model = b.build(spec, seed=seed, source=source)
    if tensors is not None:
        fresh = b.state_to_numpy(model) if tensors.keys() != ckpt.tensors.keys() else {}
        b.load_numpy_state(model, {**{k: v for k, v in fresh.items() if k not in tensors}, **tensors}, source=ckpt.path)
    return model


def head_keys(spec: ModelSpec, keys) -> list[str]:
    """The tensors of the classifier head (`spec.classifier` prefix) among `keys`."""
    if not spec.classifier:
        raise ValueError(f"{spec.name}: its spec names no classifier head, so the labels cannot change")
    return [k for k in keys if k.startswith(spec.classifier + ".")]


def _with_head(spec: ModelSpec, ckpt: Checkpoint | None, origin: str, num_classes: int | None, labels: list[str] | None):
    """The spec of the model to build for the wanted labels, and the checkpoint tensors to load into it
    (None: nothing to load; without the head's keys: the head stays freshly initialised)."""
    if labels is None and num_classes is None:
        return spec, ckpt.tensors if ckpt else None
    labels = [str(label) for label in labels] if labels is not None else None
    if labels is not None and num_classes is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given, but num_classes={num_classes}")
    if labels is not None and len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct: {labels}")
    k = len(labels) if labels is not None else num_classes
    labels = labels if labels is not None else (list(spec.labels) if k == len(spec.labels) else [str(i) for i in range(k)])
    if labels == list(spec.labels):
        return spec, ckpt.tensors if ckpt else None
    new = spec.replace(config={**spec.config, "num_classes": k}, labels=labels)
    if ckpt is None:
        return new, None
    keys = head_keys(spec, ckpt.tensors)
    if sorted(labels) == sorted(spec.labels):  # the same classes in another order: permute the head's rows
        rows = [spec.labels.index(label) for label in labels]
        return new, {n: (t[rows] if n in keys else t) for n, t in ckpt.tensors.items()}
    return new.replace(finetuned_from=origin_name(origin)), {  # the immediate parent, like the Hub's base_model
        n: t for n, t in ckpt.tensors.items() if n not in keys}


def origin_name(origin: str) -> str:
    """How a fine-tuned model names its start: `cnn-mnist.v1` for a registry model (its tag resolved),
    the Hub id as given, or a file's name."""
    if _is_hub(origin):
        return origin
    if _is_path(origin):
        return os.path.basename(origin.removeprefix("file://"))
    base, tag = registry.split_tag(origin)
    return f"{base}.{registry.weights_entry(base, tag)['tag']}"


def save(model, path: str | os.PathLike, spec: ModelSpec | None = None) -> Path:
    """Write `model` (either backend; a `torch.compile` or DDP wrapper is looked through, so the file keeps
    the plain PyTorch names) as the one checkpoint format, atomically."""
    spec = spec or getattr(unwrap(model), "zoo_spec", None)
    if spec is None:
        raise ValueError("model has no .zoo_spec: pass spec=zoo.registry.get_spec(NAME) to describe it")
    b = get_backend(backend_of(model))
    return write_checkpoint(path, b.state_to_numpy(model), make_metadata(spec, b.framework_version()))


@dataclass
class Prediction:
    labels: list[str]
    indices: np.ndarray  # (N,) int
    probabilities: np.ndarray  # (N, classes) float32
    logits: np.ndarray  # (N, classes) float32


class Pipeline:
    """Raw inputs -> predictions, applying the model's own preprocessing in NumPy."""

    def __init__(self, model, backend: str | None = None):
        if backend is not None and canonical_backend(backend) != backend_of(model):
            raise ValueError(f"a {backend_of(model)} model cannot run on the {backend!r} backend; load it with backend={backend!r}")
        self.model = model
        self._b = backend_for(model)  # the model's framework, spec and device: inputs go there, results come back
        self.backend = self._b.NAME
        self.spec: ModelSpec = self._b.spec

    def preprocess(self, inputs: Any) -> np.ndarray:
        from . import preprocess

        kind = self.spec.preprocessing["kind"]
        if kind == "image":
            return preprocess.image_batch(inputs, self.spec.preprocessing)
        if kind == "text":
            return preprocess.text_batch(inputs, self.spec)
        raise ValueError(f"{self.spec.name}: unknown preprocessing kind {kind!r}")

    def __call__(self, inputs: Any) -> Prediction:
        logits = np.asarray(self._b.logits(self.model, self.preprocess(inputs)), dtype=np.float32)
        from .numerics import softmax

        probs = softmax(logits)
        idx = logits.argmax(axis=1)
        labels = [self.spec.labels[i] if i < len(self.spec.labels) else str(i) for i in idx]
        return Prediction(labels=labels, indices=idx, probabilities=probs.astype(np.float32), logits=logits)


def pipeline(name_or_model: Any, backend: str | None = None, pretrained: bool = True, device: Any = None) -> Pipeline:
    """`zoo.pipeline("cnn-mnist", backend="jax")(images)` -> Prediction; also accepts a loaded model (on any device)."""
    if isinstance(name_or_model, (str, os.PathLike)):
        backend = backend or "torch"
        model = load(str(name_or_model), backend=backend, pretrained=pretrained, device=device)
    else:
        model = name_or_model
        backend = backend or backend_of(model)
    return Pipeline(model, backend)
