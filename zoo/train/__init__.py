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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text_atomic
from ..backends import canonical_backend, get_backend
from ..checkpoint import make_metadata, write_checkpoint
from ..optim import OptimizerConfig
from ..registry import get_spec

STATE_FILE = "train_state.safetensors"


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
    max_train_examples: int | None = None  # smoke tests and quick looks

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        values.pop("description", None)
        values["optimizer"] = OptimizerConfig(**values.get("optimizer", {}))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(model, backend: str, data, spec, batch_size: int = 500, progress: bool = False) -> dict[str, Any]:
    """Accuracy and mean cross-entropy on a whole ArraySet, in a fixed order; also the predictions."""
    from ..data.pipeline import batches

    b = get_backend(backend)
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
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    predictions = logits.argmax(1)
    return {
        "accuracy": float((predictions == data.labels).mean()),
        "loss": float(-log_probs[np.arange(len(data)), data.labels].mean()),
        "n": int(len(data)),
        "predictions": predictions,
    }


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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def fit(cfg: TrainConfig, out_dir: str | os.PathLike, data_dir: str | None = None, resume: bool = False,
        progress: bool = True) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from ..data.pipeline import batches, load_datasets, steps_per_epoch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend_name = canonical_backend(cfg.backend)
    b = get_backend(backend_name)
    spec = get_spec(cfg.model)
    data = load_datasets(spec, data_dir, cfg.val_fraction, cfg.seed)
    train = data["train"]
    if cfg.max_train_examples:
        train = train.subset(np.arange(min(cfg.max_train_examples, len(train))))
    n_steps = steps_per_epoch(len(train), cfg.batch_size)
    if cfg.optimizer.schedule != "constant" and cfg.optimizer.total_steps <= 0:
        cfg.optimizer.total_steps = n_steps * cfg.epochs
    model = b.build(spec, seed=cfg.seed, **cfg.model_overrides)
    trainer = b.Trainer(model, cfg.optimizer)
    start_epoch, start_step, history, elapsed = 0, 0, [], 0.0
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        tensors, meta = load_training_state(state_path)
        b.restore_trainer_state(trainer, tensors, meta, str(state_path))
        start_epoch, start_step, history = meta["epoch"], meta["step_in_epoch"], meta["history"]
        elapsed = history[-1]["elapsed_s"] if history else 0.0
        print(f"resuming {cfg.model} [{backend_name}] at epoch {start_epoch + 1}, step {start_step}")
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    def checkpoint(epoch, step):
        save_training_state(out, b, trainer, cfg, epoch, step, history)

    for epoch in range(start_epoch, cfg.epochs):
        began = time.perf_counter()
        losses = []
        bar = tqdm(batches(train, spec, cfg.batch_size, seed=cfg.seed, epoch=epoch, augment=cfg.augment, start_step=start_step),
                   total=n_steps, initial=start_step, desc=f"{cfg.model} [{backend_name}] epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, dynamic_ncols=True, mininterval=2.0)
        for step, (x, y) in enumerate(bar, start=start_step):
            losses.append(trainer.step(x, y))
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < n_steps:
                checkpoint(epoch, step + 1)
        bar.close()
        start_step = 0
        val = evaluate(model, backend_name, data["val"], spec, cfg.eval_batch_size)
        elapsed += time.perf_counter() - began
        from ..optim import learning_rate

        record = {"epoch": epoch + 1, "step": trainer.steps_done, "train_loss": float(np.mean(losses)) if losses else None,
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                  "lr": float(learning_rate(cfg.optimizer, max(trainer.steps_done - 1, 0))), "elapsed_s": round(elapsed, 1)}
        history.append(record)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        model_spec = model.zoo_spec
        write_checkpoint(out / f"epoch-{epoch + 1}.safetensors", b.state_to_numpy(model), make_metadata(model_spec, b.framework_version()))
        plot_curves(history, out / "curves.png", f"{cfg.model} [{backend_name}]")
        checkpoint(epoch + 1, 0)
    final = out / "final.safetensors"
    write_checkpoint(final, b.state_to_numpy(model), make_metadata(model.zoo_spec, b.framework_version()))
    test = evaluate(model, backend_name, data["test"], spec, cfg.eval_batch_size)
    summary = {
        "model": cfg.model, "backend": backend_name, "framework": b.framework_version(), "epochs": cfg.epochs,
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None, "test_accuracy": test["accuracy"],
        "test_loss": test["loss"], "train_wall_time_s": history[-1]["elapsed_s"] if history else 0.0,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "config": cfg.to_dict(), "weights": str(final),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"{cfg.model} [{backend_name}]: test accuracy {100 * test['accuracy']:.2f} %")
    return summary
