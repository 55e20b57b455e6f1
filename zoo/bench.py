"""`zoo bench`: training-step and inference speed of every zoo model in both frameworks, each configuration in a
fresh process, beside the loops a reader of the PyTorch-vs-JAX article writes.

    zoo bench [MODEL ...] [--backend torch,jax] [--batch 64] [--task train,infer] [--device cpu|gpu] [--out DIR]

Variants (training only for the baselines):
- `zoo`: the zoo's own path (`backend.trainer(...).step`, NumPy batches in, losses read every 20 steps as
  `zoo train` does; `backend.logits` for inference);
- `article-torch`: the article's PyTorch loop on the same module: `DataLoader` (shuffled, 2 workers), batch
  by batch, `loss.item()` every step;
- `plain-nnx`: the plain Flax NNX loop on the same module: an `nnx.jit` step over model + `nnx.Optimizer`,
  `float(loss)` every step, pooling written with `nnx.max_pool` as a reader would.
Each row: time to the first finished step (process start, imports and compilation included), the first step
alone (compilation), then `repeats` timed runs of `steps` steps each: the median step time and the spread
(min-max over runs), samples/s at the median, and the process's peak RSS (and device memory on a GPU).
Random inputs of the model's shape: images at the model's size (28x28, 224x224), or token ids at the model's full `max_len` (no padding).
Writes OUT/bench.json (rows and environment), OUT/bench.md (tables and JAX/PyTorch ratios), OUT/bench.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

START = time.perf_counter()  # in a child: the process has just started (imports of the zoo follow)
VARIANTS = {"torch": ("zoo", "article-torch"), "jax": ("zoo", "plain-nnx")}
BASELINE = {"torch": "article-torch", "jax": "plain-nnx"}
MIN_RUN_S = 0.5  # each timed run lasts at least this long (more steps for fast models)


def distinct_models() -> list[str]:
    """Every registry model the zoo trains whose architecture and config differ from an earlier one's (cnn-usps is
    cnn-mnist's network with other weights: same speed). torchvision's classifiers (`import_from`) have no article
    baseline and are not in the default run."""
    from .registry import get_spec, list_models, model_info

    seen, names = set(), []
    for name in list_models():
        if model_info(name).get("import_from"):
            continue
        spec = get_spec(name)
        key = (spec.arch, json.dumps(spec.config, sort_keys=True))
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def example_inputs(spec, batch: int, n_batches: int = 1, seed: int = 0):
    """Random inputs of the model's shape as the data pipeline gives them (NHWC float32 / int token ids)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = batch * n_batches
    p = spec.preprocessing
    if p["kind"] == "text":
        x = rng.integers(2, spec.config["vocab_size"], size=(n, p["max_len"])).astype(np.int64)
    else:
        x = rng.normal(size=(n, p["height"], p["width"], p["channels"])).astype(np.float32)
    return x, rng.integers(0, spec.config["num_classes"], size=n)


def optimizer_config(name: str):
    """The model's recipe optimizer (what `zoo train` uses), else the library default."""
    from .cli_train import recipe_path
    from .optim import OptimizerConfig

    path = recipe_path(None, name)
    values = json.loads(path.read_text()).get("optimizer", {}) if path else {}
    cfg = OptimizerConfig(**values)
    if cfg.schedule != "constant":
        cfg.total_steps = 10_000  # a schedule needs its length; the cost of a step does not depend on it
    return cfg


def peak_rss_kib() -> int:
    """This process's own peak resident memory (Linux `VmHWM`). Not `ru_maxrss`: a child started by vfork + exec
    inherits its parent's peak there."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def peak_memory(backend: str, device) -> dict:
    """Peak RSS of this process, and the accelerator's peak where there is one."""
    out = {"peak_rss_mb": round(peak_rss_kib() / 1024)}
    if backend == "torch" and device.type == "cuda":
        import torch

        out["peak_device_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    elif backend == "jax" and device is not None and device.platform != "cpu":
        out["peak_device_mb"] = round(device.memory_stats().get("peak_bytes_in_use", 0) / 2**20)
    return out


def environment(backend: str, device) -> dict:
    import numpy as np

    env = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
           "platform": platform.platform()}
    if backend == "torch":
        import torch

        env.update(torch=torch.__version__, device=str(device), threads=torch.get_num_threads(),
                   float32_matmul_precision=torch.get_float32_matmul_precision(),
                   deterministic=torch.are_deterministic_algorithms_enabled())
        if device.type == "cuda":  # cuDNN's TF32 default (True) applies to convolutions; matmuls follow the precision above
            env.update(device_name=torch.cuda.get_device_name(device), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    else:
        import flax
        import jax

        env.update(jax=jax.__version__, flax=flax.__version__, device=str(device or jax.devices()[0]),
                   default_matmul_precision=str(jax.config.jax_default_matmul_precision),
                   xla_flags=os.environ.get("XLA_FLAGS", ""))
    return env


def timed_runs(step, sync, steps: int, repeats: int) -> list[float]:
    """Seconds per step of `repeats` runs of `steps` steps each, the queue drained (`sync`) at the end of each."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            last = step()
        sync(last)
        times.append((time.perf_counter() - start) / steps)
    return times


def steps_for(step_s: float) -> int:
    return max(2, min(200, int(MIN_RUN_S / max(step_s, 1e-6)) + 1))


def run_config(cfg: dict) -> dict:
    """One configuration, in this (fresh) process."""

    from . import api
    from .backends import get_backend
    from .registry import get_spec

    name, backend, variant, batch, task = cfg["model"], cfg["backend"], cfg["variant"], cfg["batch"], cfg["task"]
    spec = get_spec(name)
    b = get_backend(backend, spec=spec, device=cfg.get("device"))
    if backend == "torch":
        import torch

        torch.set_flush_denormal(True)  # as the zoo's trainer does on CPU (denormals slow the LSTM backward 10x)
    if variant == "plain-nnx":
        _textbook_flax_layers()
    model = api.load(name, backend=backend, pretrained=False, device=cfg.get("device"))
    opt = optimizer_config(name)
    warmup = 2
    if task == "infer":
        x, _ = example_inputs(spec, batch)
        step, sync = (lambda: b.logits(model, x)), (lambda last: None)  # logits come back as NumPy: synced
    elif variant == "zoo":
        x, y = example_inputs(spec, batch)
        trainer = b.trainer(model, opt)
        step, sync = (lambda: trainer.step(x, y)), (lambda last: float(last))
    elif variant == "article-torch":
        step, sync = _article_torch_loop(b, model, spec, opt, batch)
    elif variant == "plain-nnx":
        step, sync = _plain_nnx_loop(b, model, spec, opt, batch)
    else:
        raise ValueError(f"unknown variant {variant!r}; known: zoo, {', '.join(BASELINE.values())}")
    first = time.perf_counter()
    sync(step())
    first_step_s = time.perf_counter() - first
    time_to_first_step_s = time.perf_counter() - START
    probe = timed_runs(step, sync, warmup, 1)[0]  # warm-up, and a step-time estimate to size the runs
    steps = steps_for(probe)
    per_step = timed_runs(step, sync, steps, cfg["repeats"])
    median = statistics.median(per_step)
    return {**{k: cfg[k] for k in ("model", "task", "backend", "variant", "batch")},
            "step_ms": round(median * 1e3, 3), "min_ms": round(min(per_step) * 1e3, 3), "max_ms": round(max(per_step) * 1e3, 3),
            "samples_per_s": round(batch / median, 1), "first_step_s": round(first_step_s, 3),
            "time_to_first_step_s": round(time_to_first_step_s, 2), "steps_per_run": steps, "runs": cfg["repeats"],
            "optimizer": opt.name if task == "train" else None, **peak_memory(backend, b.device),
            "input": "x".join(map(str, example_inputs(spec, 1)[0].shape[1:])), "env": environment(backend, b.device)}


def _article_torch_loop(b, model, spec, opt, batch: int):
    """The article's loop: a DataLoader over a training set of MNIST's or IMDb's size, `loss.item()` every step."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from .optim import torch_optimizer

    epoch = 25_000 if spec.preprocessing["kind"] == "text" else 60_000
    x, y = example_inputs(spec, batch, -(-epoch // batch))
    loader = DataLoader(TensorDataset(b.to_input(x).cpu(), torch.from_numpy(y)), batch_size=batch, shuffle=True, num_workers=2)
    batches = iter(loader)
    optimizer = torch_optimizer(model.parameters(), opt)
    model.train()

    def step():
        nonlocal batches
        try:
            xb, yb = next(batches)
        except StopIteration:  # the next epoch
            batches = iter(loader)
            xb, yb = next(batches)
        xb, yb = xb.to(b.device), yb.to(b.device)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step, (lambda last: None)


def _plain_nnx_loop(b, model, spec, opt, batch: int):
    """The plain Flax NNX loop: `nnx.jit` over model + `nnx.Optimizer`, the loss read every step."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from .optim import optax_optimizer

    x, y = example_inputs(spec, batch)
    optimizer = nnx.Optimizer(model, optax_optimizer(opt), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def step():
        model.train()
        return float(train_step(model, optimizer, b.to_input(x), jnp.asarray(y)))

    return step, (lambda last: None)


def _textbook_flax_layers() -> None:
    """The reader's Flax CNN pools with `nnx.max_pool` (the zoo's reshape-and-max is one of its fast paths)."""
    from flax import nnx

    from .flax_models import cnn

    cnn.max_pool = lambda x, size: nnx.max_pool(x, window_shape=(size, size), strides=(size, size))


def run_child(cfg: dict) -> dict:
    """`run_config` in a fresh interpreter (so no configuration's memory or compiled code helps another)."""
    out = subprocess.run([sys.executable, "-m", "zoo.bench", "--child", json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"zoo bench {cfg}: the child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def configurations(models, backends, batches, tasks, device, repeats) -> list[dict]:
    """Every combination; the article's baselines only for models the zoo trains (an imported torchvision classifier
    has no article loop, and the article's in-memory epoch of 60,000 images at 224x224 would take 36 GB)."""
    from .registry import model_info

    configs = []
    for model in models:
        baselines = not model_info(model).get("import_from")
        for task in tasks:
            for batch in batches:
                for backend in backends:
                    for variant in VARIANTS[backend] if task == "train" and baselines else ("zoo",):
                        configs.append({"model": model, "task": task, "backend": backend, "variant": variant, "batch": batch,
                                        "device": device, "repeats": repeats})
    return configs


def ratio_rows(rows: list[dict]) -> list[dict]:
    """Per model, task and batch: JAX / PyTorch step time (zoo paths), and each zoo path's speed-up over its baseline."""
    by = {(r["model"], r["task"], r["batch"], r["backend"], r["variant"]): r["step_ms"] for r in rows}
    out = []
    for model, task, batch in dict.fromkeys((r["model"], r["task"], r["batch"]) for r in rows):
        row = {"model": model, "task": task, "batch": batch}
        torch_ms, jax_ms = by.get((model, task, batch, "torch", "zoo")), by.get((model, task, batch, "jax", "zoo"))
        if torch_ms and jax_ms:
            row["jax/torch"] = round(jax_ms / torch_ms, 2)
        for backend, baseline in BASELINE.items():
            base, zoo_ms = by.get((model, task, batch, backend, baseline)), by.get((model, task, batch, backend, "zoo"))
            if base and zoo_ms:
                row[f"zoo {backend} speed-up over {baseline}"] = round(base / zoo_ms, 2)
        out.append(row)
    return out


def markdown(rows: list[dict], ratios: list[dict], envs: dict) -> str:
    columns = ["model", "task", "backend", "variant", "batch", "input", "step_ms", "min_ms", "max_ms", "samples_per_s",
               "first_step_s", "time_to_first_step_s", "peak_rss_mb"]
    if any("peak_device_mb" in r for r in rows):
        columns.append("peak_device_mb")

    def table(items, cols):
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return "\n".join(lines + ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in items])

    ratio_cols = list(dict.fromkeys(k for r in ratios for k in r))
    env_lines = "\n".join(f"- {backend}: " + ", ".join(f"{k} {v}" for k, v in env.items()) for backend, env in envs.items())
    return ("# zoo bench\n\n" + env_lines + "\n\nMedian time per step over the timed runs, spread min-max; JAX compilation "
            "is in `first_step_s` only.\n\n" + table(rows, columns) + "\n\n## Ratios (one run, same machine)\n\n"
            + table(ratios, ratio_cols) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        items = [r for r in rows if r["task"] == task]
        groups = list(dict.fromkeys(f"{r['model']}\nbatch {r['batch']}" for r in items))
        series = list(dict.fromkeys(f"{r['backend']} {r['variant']}" for r in items))
        width = 0.8 / len(series)
        for i, s in enumerate(series):
            values = {f"{r['model']}\nbatch {r['batch']}": r["samples_per_s"] for r in items if f"{r['backend']} {r['variant']}" == s}
            ax.bar([g + i * width for g in range(len(groups))], [values.get(g, 0) for g in groups], width, label=s)
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=7)
        ax.set_yscale("log")
        ax.set(ylabel="samples / s (log)", title=f"{task}: higher is better")
        ax.legend(fontsize=7)
    fig.tight_layout()
    from .atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write(rows: list[dict], out: Path) -> None:
    from .atomic import write_text_atomic

    envs = {}
    for r in rows:
        envs.setdefault(r["backend"], r["env"])
    rows = [{k: v for k, v in r.items() if k != "env"} for r in rows]
    ratios = ratio_rows(rows)
    write_text_atomic(out / "bench.json", json.dumps({"environment": envs, "rows": rows, "ratios": ratios}, indent=2) + "\n")
    write_text_atomic(out / "bench.md", markdown(rows, ratios, envs))
    plot(rows, out / "bench.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoo bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", help="registry names (default: every distinct architecture in the registry)")
    parser.add_argument("--backend", default="torch,jax", help="comma-separated: torch,jax")
    parser.add_argument("--batch", default="64", help="comma-separated batch sizes, e.g. 1,64,256")
    parser.add_argument("--task", default="train,infer", help="comma-separated: train,infer")
    parser.add_argument("--device", default=None, help="cpu (default) or gpu (cuda for PyTorch, gpu for JAX)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (median; at least 5 advised)")
    parser.add_argument("--out", default="bench", help="folder for bench.json, bench.md, bench.png")
    parser.add_argument("--child", help=argparse.SUPPRESS)


def run(args) -> int:
    if args.child:
        print(json.dumps(run_config(json.loads(args.child))))
        return 0
    from tqdm.auto import tqdm

    from .registry import get_spec

    models = args.models or distinct_models()
    for name in models:
        get_spec(name)  # an unknown name fails before any run
    backends, tasks = args.backend.split(","), args.task.split(",")
    for value, known in ((backends, VARIANTS), (tasks, ("train", "infer"))):
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"zoo bench: unknown {unknown}; choose from {', '.join(known)}")
    configs = configurations(models, backends, [int(b) for b in args.batch.split(",")], tasks, args.device, args.repeats)
    rows, out = [], Path(args.out)
    for cfg in tqdm(configs, desc="zoo bench", unit="config"):
        row = run_child({**cfg, "device": _device_name(cfg["backend"], args.device)})
        tqdm.write(f"{row['model']} {row['task']} {row['backend']} {row['variant']} batch {row['batch']}: "
                   f"{row['step_ms']} ms/step, {row['samples_per_s']} samples/s")
        rows.append(row)
        write(rows, out)  # after each configuration: a run cut short (a lent GPU's minutes) keeps what it measured
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return 0


def _device_name(backend: str, device: str | None) -> str | None:
    if device in (None, "cpu"):
        return device
    return {"torch": "cuda"}.get(backend, "gpu") if device in ("gpu", "cuda") else device


if __name__ == "__main__":
    sys.exit(main())
