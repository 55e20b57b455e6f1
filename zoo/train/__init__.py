"""A small training library: one loop for both backends over the shared data pipeline.

    from zoo.train import TrainConfig, fit
    summary = fit(TrainConfig(model="cnn-mnist", backend="jax", epochs=3), out_dir="runs/cnn")

Each run writes `metrics.jsonl` (one line per epoch), `curves.png`, `epoch-N.safetensors` checkpoints
(zoo format, loadable by `zoo.load`), `train_state.safetensors` (weights + optimizer + RNG + position,
metadata in JSON; never pickle; atomic) and `summary.json`. The backend's `Trainer.step` is the one
piece a compiled or scanned variant replaces.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text_atomic
from ..backends import Backend, backend_for, canonical_backend, get_backend, start_data_parallel, stop_data_parallel
from ..checkpoint import make_metadata, write_checkpoint
from ..numerics import log_softmax
from ..optim import OptimizerConfig
from ..registry import get_spec, split_tag

STATE_FILE = "train_state.safetensors"
LOSS_READ_EVERY = 20  # steps between reading the losses back to the host (the progress bar's figure)


SELECTION_RULES = ("val_accuracy", "val_loss")


@dataclass
class TrainConfig:
    model: str
    backend: str = "torch"
    epochs: int = 5
    batch_size: int = 64
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    augment: bool = False
    val_fraction: float = 0.1
    seed: int = 0
    eval_batch_size: int = 500
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"dropout": 0.2}
    preprocessing_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"max_len": 400}: travels with the weights
    max_train_examples: int | None = None  # smoke tests and quick looks
    # Fine-tuning: start from weights (registry name[.tag], path or hf-hub: id) instead of a random init.
    init_from: str | None = None
    freeze: str | list[str] = "none"  # none | backbone | a list of parameter-name prefixes
    backbone_lr_scale: float = 1.0  # learning rate of everything but the classifier head, relative to `lr`
    early_stopping_patience: int = 0  # stop after this many epochs without a better validation result (0: never)
    select_on: str = "val_accuracy"  # the epoch kept: best validation accuracy, or lowest validation loss ("val_loss")
    data: dict[str, Any] | None = None  # a fine-tuning data source: {"source": ..., zoo.data.sources.load_source options}
    adapt: dict[str, Any] | None = None  # input adaptation rule (zoo.adapt), recorded in the checkpoint's preprocessing
    name: str | None = None  # the trained model's name in its checkpoint (default: `model`)
    device: str | None = None  # torch: "cpu" (default), "cuda", "cuda:1"; JAX: "cpu", "gpu", "gpu:1" (default: JAX's default)
    deterministic: bool = False  # deterministic kernels (on a GPU, exact resume needs them); CPU kernels already are
    # Data parallelism: batch_size stays the global batch (the optimizer's), cut into equal parts, one per rank
    # (torch, under torchrun) or device (JAX: every device of every process), and into grad_accum micro-batches.
    distributed: bool = False
    grad_accum: int = 1

    def __post_init__(self):
        if self.select_on not in SELECTION_RULES:
            raise ValueError(f"select_on={self.select_on!r}: use one of {SELECTION_RULES}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum={self.grad_accum}: use 1 (no accumulation) or more micro-batches per step")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        values.pop("description", None)
        values["optimizer"] = OptimizerConfig(**values.get("optimizer", {}))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(model, backend: str | Backend, data, spec, batch_size: int = 500, progress: bool = False) -> dict[str, Any]:
    """Accuracy and mean cross-entropy on a whole ArraySet, in a fixed order; also the predictions."""
    from ..data.pipeline import batches

    b = backend if isinstance(backend, Backend) else backend_for(model, spec)  # where the model lives
    model.eval()
    order = np.arange(len(data))
    if spec.preprocessing["kind"] == "text":  # similar lengths together: less padding; padding changes no result
        order = np.argsort([len(s) for s in data.inputs], kind="stable")
    logits = []
    it = batches(data.subset(order), spec, batch_size, shuffle=False)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=-(-len(data) // batch_size), desc=f"eval {spec.name} [{backend}]", leave=False)
    for x, _ in it:
        logits.append(b.logits(model, x))
    logits = np.concatenate(logits).astype(np.float64)[np.argsort(order)]  # back to the data's order
    log_probs = log_softmax(logits)
    predictions = logits.argmax(1)
    return {
        "accuracy": float((predictions == data.labels).mean()),
        "loss": float(-log_probs[np.arange(len(data)), data.labels].mean()),
        "n": int(len(data)),
        "predictions": predictions,
    }


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, names: list[str] | None) -> dict[str, float]:
    """Accuracy over each true class's examples, keyed by the class's label (its index where there are none)."""
    classes = range(len(names)) if names else np.unique(labels)
    return {str(names[c]) if names else str(int(c)): float((predictions[labels == c] == c).mean())
            for c in classes if (labels == c).any()}


def recorded_metrics(result: dict[str, Any], backend: str) -> dict[str, Any]:
    """An `evaluate` result as the metrics recorded with weights (`zoo eval --record`, `zoo push --evaluate`)."""
    from .._version import __version__

    return {"test_accuracy": round(result["accuracy"], 6), "test_loss": round(result["loss"], 6), "n": result["n"],
            "framework": get_backend(backend).framework_version(), "zoo_version": __version__}


def save_training_state(out_dir: Path, backend, trainer, cfg: TrainConfig, epoch: int, step_in_epoch: int, history: list) -> None:
    tensors, meta = backend.trainer_state(trainer)
    meta = {"config": cfg.to_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch, "history": history, **meta}
    write_checkpoint(out_dir / STATE_FILE, tensors, {"format": "zoo.train_state/1", "state": json.dumps(meta)})


def load_training_state(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "zoo.train_state/1":
            raise ValueError(f"{path}: not a zoo training state (format {meta.get('format')!r})")
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(meta["state"])


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", color="C1", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def prepare_model_and_data(cfg: TrainConfig, backend: str, data_dir: str | None = None):
    """The model to train (random, or `init_from` with a head for the data's labels) and its data as
    ArraySets (train / val / test; test may be None), ready for batching."""
    from .. import api
    from ..data.pipeline import arrays_for, load_datasets

    b = get_backend(backend, device=cfg.device)
    if cfg.data is None:  # the registry model's own dataset (validation: its own split, else held out of train)
        name, tag = split_tag(cfg.model)  # `lstm-imdb.v1`: the model as that tag was built (its config, preprocessing)
        spec = get_spec(name, tag)
        spec = spec.replace(config={**spec.config, **cfg.model_overrides})
        if cfg.init_from:
            model = api.load(cfg.init_from, backend=backend, seed=cfg.seed, labels=spec.labels, device=cfg.device, **cfg.model_overrides)
            if model.zoo_spec.name != spec.name:  # a registry model fine-tuned from another (cnn-usps from cnn-mnist)
                base = model.zoo_spec
                if (base.arch, base.config) != (spec.arch, spec.config):
                    raise ValueError(f"{cfg.model} is {spec.arch} {spec.config}, but init_from {cfg.init_from!r} holds "
                                     f"{base.arch} {base.config}: the weights cannot start this model")
                model.zoo_spec = spec
        else:
            model = b.build(spec, seed=cfg.seed)
        if cfg.preprocessing_overrides:  # e.g. a longer max_len for a new tag; recorded in every checkpoint it writes
            model.zoo_spec = model.zoo_spec.replace(preprocessing={**model.zoo_spec.preprocessing, **cfg.preprocessing_overrides})
        data = load_datasets(model.zoo_spec, data_dir, cfg.val_fraction, cfg.seed)
    else:
        from ..data.sources import load_source

        options = {k: v for k, v in cfg.data.items() if k != "source"}
        spec, _ = api.load_checkpoint_for(cfg.init_from or cfg.model, pretrained=False)  # the architecture, not its weights
        source = load_source(cfg.data["source"], kind=spec.preprocessing["kind"], seed=cfg.seed,
                             val_fraction=cfg.val_fraction, **options)
        labels = source.label_names
        if cfg.init_from:
            model = api.load(cfg.init_from, backend=backend, seed=cfg.seed, labels=labels, device=cfg.device, **cfg.model_overrides)
        else:
            config = {**spec.config, **cfg.model_overrides, "num_classes": len(labels)}
            model = b.build(spec.replace(config=config, labels=labels), seed=cfg.seed)
        spec = model.zoo_spec
        preprocessing = {**spec.preprocessing, "adapt": cfg.adapt} if cfg.adapt else spec.preprocessing
        name = str(cfg.data["source"]).rstrip("/")  # a known dataset's folder name (usps) or a Hub id
        dataset = name if not os.path.exists(name) else os.path.splitext(os.path.basename(name))[0]
        model.zoo_spec = spec.replace(preprocessing=preprocessing, dataset=dataset)
        data = {split: arrays_for(model.zoo_spec, getattr(source, split)) if getattr(source, split) is not None else None
                for split in ("train", "val", "test")}
        data["source"] = {"description": source.description}
        if spec.preprocessing["kind"] == "text":  # the base tokenizer stays (its embedding rows are tied to it)
            from ..adapt import unk_rate

            data["source"]["unk_rate"] = unk_rate(source.train.inputs, spec.tokenizer_json)
            print(f"unknown-token rate of the training text under {spec.name}'s tokenizer: {100 * data['source']['unk_rate']:.2f} %")
    if cfg.init_from:  # the weights it starts from, whatever the head (the Hub's base_model: the immediate parent)
        model.zoo_spec = model.zoo_spec.replace(finetuned_from=api.origin_name(cfg.init_from))
    if cfg.name:
        model.zoo_spec = model.zoo_spec.replace(name=cfg.name)
    if cfg.max_train_examples:
        data["train"] = data["train"].subset(np.arange(min(cfg.max_train_examples, len(data["train"]))))
    return model, data


def make_deterministic(backend: str) -> None:
    """Deterministic kernels: `torch.use_deterministic_algorithms(True)` (with the cuBLAS workspace setting it
    needs), or XLA's `--xla_gpu_deterministic_ops` for JAX, which takes effect only if set before JAX starts
    its GPU backend (`zoo train --deterministic` sets it first thing)."""
    import warnings

    if backend == "torch":
        import torch

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_gpu_deterministic_ops" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()
        import jax

        if any(d.platform == "gpu" for d in jax.devices()):
            warnings.warn("JAX's GPU backend started before deterministic ops were requested: set "
                          "XLA_FLAGS=--xla_gpu_deterministic_ops=true before importing JAX", stacklevel=2)


def best_epoch(history: list[dict], select_on: str = "val_accuracy") -> dict:
    """The epoch to keep. "val_accuracy": the best validation accuracy; among equals (a small validation set
    saturates), the lower validation loss, then the earlier epoch. "val_loss": the lowest validation loss
    (for validation sets too easy for accuracy to tell epochs apart), then the earlier epoch."""
    if select_on == "val_loss":
        return min(history, key=lambda h: (h["val_loss"], h["epoch"]))
    return max(history, key=lambda h: (h["val_accuracy"], -h["val_loss"], -h["epoch"]))


def fit(cfg: TrainConfig, out_dir: str | os.PathLike, data_dir: str | None = None, resume: bool = False,
        progress: bool = True) -> dict[str, Any]:
    """Train, keeping the epoch with the best validation accuracy as the result (`final.safetensors`).
    With `cfg.distributed`, every process of the run calls this; rank 0 alone writes files."""
    backend_name = canonical_backend(cfg.backend)
    if cfg.deterministic:
        make_deterministic(backend_name)
    parallel = start_data_parallel(backend_name, cfg.device) if cfg.distributed else {}  # before any computation
    try:
        result = _fit(cfg, Path(out_dir), backend_name, parallel, data_dir, resume, progress)
    except BaseException as error:
        if cfg.distributed:  # no orderly leave: JAX's waits at a barrier for every process, which a dead one never reaches
            print(f"zoo train: rank {parallel['rank']} of {parallel['world_size']} failed: {type(error).__name__}: {error}",
                  file=sys.stderr, flush=True)
        raise
    if cfg.distributed:
        stop_data_parallel(backend_name)
    return result


def _fit(cfg: TrainConfig, out: Path, backend_name: str, parallel: dict, data_dir, resume: bool, progress: bool) -> dict[str, Any]:
    model, data = prepare_model_and_data(cfg, backend_name, data_dir)
    b = get_backend(backend_name, spec=model.zoo_spec, device=cfg.device, **parallel)  # the model as prepared: its spec, our device
    if b.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    from ..data.pipeline import steps_per_epoch
    from .freeze import Freeze

    divisible_by = b.shards * cfg.grad_accum
    if cfg.batch_size % divisible_by:
        raise ValueError(f"batch size {cfg.batch_size} is the global batch: it must split into {b.shards} equal "
                         f"{'rank' if b.NAME == 'torch' else 'device'} slices x {cfg.grad_accum} micro-batches; "
                         f"use a multiple of {divisible_by}")
    n_steps = steps_per_epoch(len(data["train"]), cfg.batch_size, divisible_by)
    if cfg.distributed and b.rank == 0:
        print(f"data-parallel: each global batch of {cfg.batch_size} in {b.shards} slices ({b.world_size} process(es)) "
              f"x {cfg.grad_accum} micro-batch(es)", flush=True)
    if cfg.optimizer.schedule != "constant" and cfg.optimizer.total_steps <= 0:
        cfg.optimizer.total_steps = n_steps * cfg.epochs
    freeze = Freeze.from_config(cfg.freeze, model.zoo_spec.classifier)
    trainer = b.trainer(model, cfg.optimizer, freeze=freeze, backbone_lr_scale=cfg.backbone_lr_scale, grad_accum=cfg.grad_accum)
    start_epoch, start_step, history = 0, 0, []
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        tensors, meta = load_training_state(state_path)
        b.restore_trainer_state(trainer, tensors, meta, str(state_path))
        start_epoch, start_step, history = meta["epoch"], meta["step_in_epoch"], meta["history"]
        print(f"resuming {cfg.model} [{backend_name}] at epoch {start_epoch + 1}, step {start_step}")
    if b.rank == 0:
        write_text_atomic(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.early_stopping_patience and history and \
                history[-1]["epoch"] - best_epoch(history, cfg.select_on)["epoch"] >= cfg.early_stopping_patience:
            print(f"early stop: no better {cfg.select_on.replace('_', ' ')} for {cfg.early_stopping_patience} epochs")
            break
        run_epoch(cfg, b, trainer, data, epoch, start_step, n_steps, history, out, progress and b.rank == 0)
        start_step = 0
    return finish(cfg, b, model, data, history, out)


def run_epoch(cfg: TrainConfig, b, trainer, data: dict, epoch: int, start_step: int, n_steps: int, history: list,
              out: Path, progress: bool) -> None:
    """One epoch from `start_step`: steps, validation, metrics line, epoch checkpoint, plot, training state.
    Every rank validates (the same weights, the same result: early stopping agrees); rank 0 writes."""
    from tqdm.auto import tqdm

    from ..data.pipeline import batches

    model, spec = trainer.model, b.spec
    began = time.perf_counter()
    elapsed = history[-1]["elapsed_s"] if history else 0.0
    losses, read = [], []  # losses stay on the device; read back (a host sync) every LOSS_READ_EVERY steps
    train = batches(data["train"], spec, cfg.batch_size, seed=cfg.seed, epoch=epoch, augment=cfg.augment, start_step=start_step,
                    rank=b.rank, world_size=b.world_size, divisible_by=b.shards * cfg.grad_accum)
    bar = tqdm(train, total=n_steps, initial=start_step, desc=f"{spec.name} [{b.NAME}] epoch {epoch + 1}/{cfg.epochs}",
               disable=not progress, dynamic_ncols=True, mininterval=2.0)
    for step, (x, y) in enumerate(bar, start=start_step):
        losses.append(trainer.step(x, y))
        if len(losses) == LOSS_READ_EVERY:
            read += [float(v) for v in losses]
            losses.clear()
            bar.set_postfix(loss=f"{np.mean(read[-LOSS_READ_EVERY:]):.4f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < n_steps and b.rank == 0:
            save_training_state(out, b, trainer, cfg, epoch, step + 1, history)
    bar.close()
    read += [float(v) for v in losses]
    val = evaluate(model, b, data["val"], spec, cfg.eval_batch_size)
    from ..optim import learning_rate

    train_loss = b.mean_over_ranks(float(np.mean(read))) if read else None
    record = {"epoch": epoch + 1, "step": trainer.steps_done, "train_loss": train_loss,
              "val_loss": val["loss"], "val_accuracy": val["accuracy"],
              "lr": float(learning_rate(cfg.optimizer, max(trainer.steps_done - 1, 0))),
              "elapsed_s": round(elapsed + time.perf_counter() - began, 1)}
    history.append(record)
    if b.rank == 0:
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        write_checkpoint(out / f"epoch-{epoch + 1}.safetensors", b.state_to_numpy(model), make_metadata(spec, b.framework_version()))
        plot_curves(history, out / "curves.png", f"{spec.name} [{b.NAME}]")
        save_training_state(out, b, trainer, cfg, epoch + 1, 0, history)
    b.barrier()  # the epoch's files are complete before any rank goes on (and reads them in `finish`)


def finish(cfg: TrainConfig, b, model, data: dict, history: list, out: Path) -> dict[str, Any]:
    """Keep the best validation epoch as `final.safetensors`, measure it on test (once), write the summary.
    Every rank measures (JAX's arrays span every process); rank 0 writes."""
    import shutil

    from ..checkpoint import read_checkpoint

    best = best_epoch(history, cfg.select_on)
    final, kept = out / "final.safetensors", out / f"epoch-{best['epoch']}.safetensors"
    if b.rank == 0:
        with atomic_path(final) as tmp:
            shutil.copyfile(kept, tmp)
    b.load_numpy_state(model, read_checkpoint(kept).tensors, str(final))
    spec = model.zoo_spec
    test = evaluate(model, b, data["test"], spec, cfg.eval_batch_size) if data.get("test") is not None else None
    summary = {
        "model": spec.name, "backend": b.NAME, "framework": b.framework_version(), "epochs": cfg.epochs,
        "epochs_run": history[-1]["epoch"], "best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"],
        "best_val_loss": best["val_loss"],
        "final_val_accuracy": history[-1]["val_accuracy"],
        "test_accuracy": test["accuracy"] if test else None, "test_loss": test["loss"] if test else None,
        "test_accuracy_per_class": per_class_accuracy(test["predictions"], data["test"].labels, spec.labels) if test else None,
        "train_wall_time_s": history[-1]["elapsed_s"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "config": cfg.to_dict(), "weights": str(final), "finetuned_from": spec.finetuned_from, "data": data.get("source"),
    }
    if b.rank != 0:
        return summary
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    where = f"best validation epoch {best['epoch']} of {history[-1]['epoch']} ({100 * best['val_accuracy']:.2f} %)"
    print(f"{spec.name} [{b.NAME}]: {where}" + (f"; test accuracy {100 * test['accuracy']:.2f} %" if test else "; no test split"))
    return summary
