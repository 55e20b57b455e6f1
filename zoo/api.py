"""`zoo.load`, `zoo.save`, `zoo.pipeline`: the same calls for both backends."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .backends import backend_for, backend_of, canonical_backend, get_backend, unwrap
from .checkpoint import PROVENANCE_KEYS, Checkpoint, CheckpointError, make_metadata, read_checkpoint, write_checkpoint
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
        provenance={k: ckpt.metadata[k] for k in PROVENANCE_KEYS if k in ckpt.metadata} or None,
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
    if not pretrained:
        return registry.get_spec(base), None
    tag = registry.weights_entry(base, tag)["tag"]
    spec = registry.get_spec(base, tag)  # as this tag's weights were built
    ckpt = read_checkpoint(resolve_weights_file(base, tag))
    if ckpt.arch != spec.arch or ckpt.config != spec.config or ckpt.preprocessing != spec.preprocessing:
        raise CheckpointError(f"{ckpt.path}: holds architecture {ckpt.arch!r} {ckpt.config} with preprocessing {ckpt.preprocessing}, "
                              f"but {base} is {spec.arch!r} {spec.config} with {spec.preprocessing}")
    return spec.replace(tokenizer_json=ckpt.tokenizer_json or spec.tokenizer_json), ckpt


def load(name_or_path: str | os.PathLike, backend: str = "torch", pretrained: bool = True, seed: int = 0, *,
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
    name_or_path = os.fspath(name_or_path)  # a pathlib.Path too
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
    provenance = {k: v for k, v in (spec.provenance or {}).items() if k != "reported_metrics"} or None  # a new head: not their accuracy
    return new.replace(finetuned_from=origin_name(origin), provenance=provenance), {  # the immediate parent, like the Hub's base_model
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


# Inputs run in batches of this many by default. Measured on 2 CPU cores (benchmarks/pipeline_memory.py,
# --batch-sizes): larger batches ran no faster, but each doubling added 0.1-0.3 GB to transformer-imdb's peak
# (attention at 64 x 256 tokens: 64 MB a layer); 256 MNIST-sized images add under 0.1 GB.
DEFAULT_BATCH_SIZE = {"text": 64, "image": 256}
# Photo classifiers (ImageNet-sized inputs, `resize_size` in their preprocessing): not measured; 256 photos at 224x224 are
# 154 MB of input alone, and a ResNet-50's activations many times that.
PHOTO_BATCH_SIZE = 32
SORT_WINDOW_BATCHES = 32  # texts are sorted by length within windows of this many batches: little padding, bounded memory
AUTO_PROGRESS_BATCHES = 4  # progress=None shows a bar once an input runs to more batches than this


def check_batch_size(batch_size: Any) -> int | None:
    """`batch_size` itself (None: the modality's default), or a ValueError saying what is wrong with it."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (or None for the default: "
                         f"{DEFAULT_BATCH_SIZE['text']} for text, {DEFAULT_BATCH_SIZE['image']} for images); got {batch_size!r}")
    return int(batch_size)


class Pipeline:
    """Raw inputs -> predictions, applying the model's own preprocessing in NumPy, in batches of `batch_size`
    (so memory stays bounded however many inputs come), with the results in input order."""

    def __init__(self, model, backend: str | None = None, batch_size: int | None = None, progress: bool | None = None):
        if backend is not None and canonical_backend(backend) != backend_of(model):
            raise ValueError(f"a {backend_of(model)} model cannot run on the {backend!r} backend; load it with backend={backend!r}")
        if progress is not None and not isinstance(progress, bool):
            raise ValueError(f"progress must be True, False or None (automatic); got {progress!r}")
        self.model = model
        self._b = backend_for(model)  # the model's framework, spec and device: inputs go there, results come back
        self.backend = self._b.NAME
        self.spec: ModelSpec = self._b.spec
        self.kind = self.spec.preprocessing["kind"]
        if self.kind not in DEFAULT_BATCH_SIZE:
            raise ValueError(f"{self.spec.name}: unknown preprocessing kind {self.kind!r}")
        photos = self.kind == "image" and "resize_size" in self.spec.preprocessing
        self.batch_size = check_batch_size(batch_size) or (PHOTO_BATCH_SIZE if photos else DEFAULT_BATCH_SIZE[self.kind])
        self.progress = progress

    def preprocess(self, inputs: Any) -> np.ndarray:
        """All of `inputs` as one canonical batch (no batching: for small inputs and inspection)."""
        from . import preprocess

        if self.kind == "image":
            return preprocess.image_batch(inputs, self.spec.preprocessing)
        return preprocess.text_batch(inputs, self.spec)

    def __call__(self, inputs: Any) -> Prediction:
        """One Prediction for a single input (a string, an image) or any iterable of them (list, tuple,
        generator, `datasets` column, (N, H, W[, C]) array), in input order."""
        items, total = self._items(inputs)
        window = self.batch_size * SORT_WINDOW_BATCHES if self.kind == "text" else self.batch_size
        bar = _ProgressBar(self.progress, total, AUTO_PROGRESS_BATCHES * self.batch_size, f"{self.spec.name} [{self.backend}]")
        parts = []
        try:
            for chunk in _chunks(items, window):
                parts.append(self._text_logits(chunk, bar) if self.kind == "text" else self._image_logits(chunk, bar))
        finally:
            bar.close()
        num_classes = self.spec.config["num_classes"]
        logits = np.concatenate(parts) if parts else np.zeros((0, num_classes), np.float32)
        return self._prediction(logits)

    def _items(self, inputs: Any) -> tuple[Any, int | None]:
        """The inputs as an iterable of single items, and how many there are (None: unknown, e.g. a generator)."""
        from .preprocess import is_single_image

        single = isinstance(inputs, str) if self.kind == "text" else is_single_image(inputs, self.spec.preprocessing)
        if single:
            return [inputs], 1
        return inputs, (len(inputs) if hasattr(inputs, "__len__") else None)

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._b.logits(self.model, batch), dtype=np.float32)

    def _image_logits(self, images: list, bar: _ProgressBar) -> np.ndarray:
        from .preprocess import image_batch

        logits = self._logits(image_batch(images, self.spec.preprocessing))
        bar.update(len(images))
        return logits

    def _text_logits(self, texts: list, bar: _ProgressBar) -> np.ndarray:
        """Logits for one window of texts, in their order: run sorted by token length, so each batch pads little
        (padding changes no result in these models)."""
        from .data.pipeline import PAD_MULTIPLE, pad_tokens
        from .preprocess import text_ids

        ids = text_ids(texts, self.spec)
        lengths = np.fromiter((len(s) for s in ids), np.int64, len(ids))
        order = np.argsort(lengths, kind="stable")
        # A window of several batches pads each to a multiple of 32 tokens: few distinct shapes, so JAX compiles
        # at most max_len / 32 times and PyTorch reuses its allocations (exact widths fragment its heap). A single
        # batch runs at its exact width, the least work for one input.
        multiple = PAD_MULTIPLE if len(ids) > self.batch_size else 1
        p = self.spec.preprocessing
        logits = np.empty((len(ids), self.spec.config["num_classes"]), np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = pad_tokens([ids[i] for i in rows], p["pad_id"], multiple=multiple, max_len=p["max_len"])
            logits[rows] = self._logits(batch)  # back into input order
            bar.update(len(rows))
        return logits

    def _prediction(self, logits: np.ndarray) -> Prediction:
        from .numerics import softmax

        probs = softmax(logits)
        idx = logits.argmax(axis=1)
        labels = [self.spec.labels[i] if i < len(self.spec.labels) else str(i) for i in idx]
        return Prediction(labels=labels, indices=idx, probabilities=probs.astype(np.float32), logits=logits)


def _chunks(items: Any, size: int):
    """Lists of up to `size` consecutive items, reading only one list's worth at a time (generators stay lazy)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class _ProgressBar:
    """A tqdm bar counting inputs. `progress` True/False forces it on/off; None shows it for inputs of more
    than `auto_after` items: at once when the total is known, else (a generator) once that many have run."""

    def __init__(self, progress: bool | None, total: int | None, auto_after: int, desc: str):
        self.progress, self.total, self.auto_after, self.desc = progress, total, auto_after, desc
        self.done = 0
        self.bar = None
        if progress or (progress is None and total is not None and total > auto_after):
            self._open()

    def _open(self) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm comes with zoo-twins[train], not the core install
            if self.progress:
                raise ImportError("progress=True needs tqdm: pip install tqdm") from None
            self.progress = False
            return
        self.bar = tqdm(total=self.total, initial=self.done, desc=self.desc, unit="input", leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.progress is None and self.total is None and self.done > self.auto_after:
            self._open()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def pipeline(name_or_model: Any, backend: str | None = None, pretrained: bool = True, *, device: Any = None,
             batch_size: int | None = None, progress: bool | None = None) -> Pipeline:
    """`zoo.pipeline("cnn-mnist", backend="jax")(images)` -> Prediction; also accepts a loaded model (on any device).
    `batch_size`: inputs per forward pass (None: 64 for text, 256 for images, 32 for photo classifiers); `progress`: a tqdm bar
    (None: shown for inputs of more than 4 batches)."""
    check_batch_size(batch_size)  # before loading a model for nothing
    if isinstance(name_or_model, (str, os.PathLike)):
        backend = backend or "torch"
        model = load(str(name_or_model), backend=backend, pretrained=pretrained, device=device)
    else:
        model = name_or_model
        backend = backend or backend_of(model)
    return Pipeline(model, backend, batch_size=batch_size, progress=progress)
