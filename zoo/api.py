"""`zoo.load`, `zoo.save`, `zoo.pipeline`: the same calls for both backends."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .backends import backend_of, canonical_backend, get_backend
from .checkpoint import Checkpoint, CheckpointError, make_metadata, read_checkpoint, sha256_file, write_checkpoint
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
    )


def resolve_weights_file(name: str, tag: str | None = None) -> str:
    """Local path of a registry model's weights, verified against the registry's sha256: the file bundled
    with the package, else the entry's Hub copy (`hf_hub_id`: ORG/REPO[@REVISION])."""
    entry = registry.weights_entry(name, tag)
    path = registry.WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        if entry.get("hf_hub_id"):
            from . import hub

            repo_id, revision = hub.parse_hub_name(entry["hf_hub_id"])
            return hub.download(repo_id, revision, entry.get("hf_hub_filename", hub.CHECKPOINT_FILE), sha256=entry.get("sha256"))
        raise FileNotFoundError(f"{path}: weights file of {name}.{entry['tag']} is missing from the installation")
    digest = sha256_file(path)
    if entry.get("sha256") and digest != entry["sha256"]:
        raise CheckpointError(f"{path}: sha256 {digest} does not match the registry's {entry['sha256']} for {name}.{entry['tag']}")
    return str(path)


def load_checkpoint_for(name_or_path: str, pretrained: bool = True) -> tuple[ModelSpec, Checkpoint | None]:
    """The spec and (when weights are wanted) the verified checkpoint behind a name, a Hub id or a path."""
    if _is_hub(name_or_path):
        from . import hub

        ckpt = read_checkpoint(hub.download(*hub.parse_hub_name(name_or_path)))
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


def load(name_or_path: str, backend: str = "torch", pretrained: bool = True, seed: int = 0, **overrides: Any):
    """A ready model: `torch.nn.Module` (backend="torch") or `flax.nnx.Module` (backend="jax"), in eval
    mode, with `.zoo_spec` (preprocessing, labels, tokenizer). `name_or_path` is a registry name
    (`cnn-mnist`, `cnn-mnist.TAG`), a Hub repo (`hf-hub:ORG/REPO[@REVISION]`), a `.safetensors` path or a
    `file://` URL. `pretrained=False` gives the
    framework's own random initialisation (seeded by `seed`). `overrides` change config values (e.g.
    `dropout=0.0`) where the weights allow it."""
    b = get_backend(backend)
    spec, ckpt = load_checkpoint_for(name_or_path, pretrained)
    source = ckpt.path if ckpt else spec.name
    model = b.build(spec, seed=seed, source=source, **overrides)
    if ckpt is not None:
        b.load_numpy_state(model, ckpt.tensors, source=ckpt.path)
    return model


def save(model, path: str | os.PathLike, spec: ModelSpec | None = None) -> Path:
    """Write `model` (either backend) as the one checkpoint format, atomically."""
    spec = spec or getattr(model, "zoo_spec", None)
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

    def __init__(self, model, backend: str):
        self.model = model
        self.backend = canonical_backend(backend)
        self.spec: ModelSpec = model.zoo_spec
        self._b = get_backend(self.backend)

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
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        idx = logits.argmax(axis=1)
        labels = [self.spec.labels[i] if i < len(self.spec.labels) else str(i) for i in idx]
        return Prediction(labels=labels, indices=idx, probabilities=probs.astype(np.float32), logits=logits)


def pipeline(name_or_model: Any, backend: str | None = None, pretrained: bool = True) -> Pipeline:
    """`zoo.pipeline("cnn-mnist", backend="jax")(images)` -> Prediction; also accepts a loaded model."""
    if isinstance(name_or_model, (str, os.PathLike)):
        backend = backend or "torch"
        model = load(str(name_or_model), backend=backend, pretrained=pretrained)
    else:
        model = name_or_model
        backend = backend or backend_of(model)
    return Pipeline(model, backend)
