"""What data parallelism over 2 processes costs per training step on this machine, for cnn-mnist and lstm-imdb in
both frameworks: the step at 1 process (global batch 64) vs 2 (32 per rank), split into compute and
communication, and the all-reduce volume. Then an ESTIMATE for 8 GPUs from that volume.

    python benchmarks/data_parallel.py [--models cnn-mnist lstm-imdb] [--backends torch jax] [--batch 64]
        [--seq-len 128] [--steps 15] [--warmup 2] [--out benchmarks/results/data_parallel]

Every setting runs in a fresh process, each process on 1 thread (1 process: half of a 2-core machine; 2: one core
each). Per-step times are medians of `--steps` steps measured in that one run, after `--warmup` (JAX: compilation).
- torch: 2 ranks under torchrun (DDP, gloo). Steps alternate with and without DDP's gradient all-reduce (`no_sync`),
  each after a barrier: compute = the step without it, communication = the difference of the medians (near 0 it
  is noise, and may come out negative).
- JAX: 1 vs 2 CPU devices in one process (XLA_FLAGS=--xla_force_host_platform_device_count=2; the same jitted step,
  the batch sharded over the mesh). Communication = an all-reduce of a parameter-sized float32 buffer over the mesh,
  timed alone; compute = the step minus that.
Writes OUT/data_parallel.{json,md,png}."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import markdown_table, run_child, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAME = "data_parallel"

# Shared by both children: the model, a trainer, this rank's (or process's) share of one fixed global batch.
SETUP = """
import json, os, statistics, sys, time
import numpy as np
args = json.loads(sys.argv[1])
import zoo
from zoo.backends import get_backend, start_data_parallel
from zoo.optim import OptimizerConfig
from zoo.testing import example_batch
backend = args["backend"]
parallel = start_data_parallel(backend) if args["processes"] > 1 or args.get("devices", 1) > 1 else {}
model = zoo.load(args["model"], backend=backend, pretrained=False)
b = get_backend(backend, spec=model.zoo_spec, **parallel)
trainer = b.trainer(model, OptimizerConfig(name="adamw", lr=1e-3))
x, y = example_batch(model.zoo_spec, args["batch"], seed=0)
x = x[:, : args["seq_len"]] if x.ndim == 2 else x  # text: a fixed width
share = args["batch"] // args["processes"]  # a process feeds its own slice (JAX on 2 devices in 1 process: all of it)
x, y = x[b.rank * share : (b.rank + 1) * share], y[b.rank * share : (b.rank + 1) * share]
ms = lambda seconds: round(1e3 * seconds, 2)
"""

TORCH_RUN = SETUP + """
import contextlib, torch, torch.distributed as dist
torch.set_num_threads(1)
def step(sync):
    if b.world_size > 1:
        dist.barrier()  # both ranks start together: the all-reduce then measures communication, not skew
    began = time.perf_counter()
    with contextlib.nullcontext() if sync or b.world_size == 1 else trainer.network.no_sync():
        float(trainer.step(x, y))
    return time.perf_counter() - began
times = {True: [], False: []}
for i in range(args["warmup"] + args["steps"]):
    for sync in (True, False) if b.world_size > 1 else (True,):  # alternating: machine load hits both alike
        t = step(sync)
        if i >= args["warmup"]:
            times[sync].append(t)
params = sum(p.numel() for p in model.parameters() if p.requires_grad)
step_s = statistics.median(times[True])
compute_s = statistics.median(times[False]) if b.world_size > 1 else step_s  # 1 rank: nothing to communicate
if b.rank == 0:
    print(json.dumps({"step_ms": ms(step_s), "compute_ms": ms(compute_s), "comm_ms": ms(step_s - compute_s),
                      "parameters": params, "input": "x".join(map(str, x.shape))}))
"""

JAX_RUN = SETUP + """
import jax, jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
def median_of(fn):
    times = []
    for i in range(args["warmup"] + args["steps"]):
        began = time.perf_counter()
        jax.block_until_ready(fn())
        if i >= args["warmup"]:
            times.append(time.perf_counter() - began)
    return statistics.median(times)
step_s = median_of(lambda: trainer.step(x, y))
params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
comm_s = 0.0
if b.mesh is not None:  # the gradient all-reduce alone: a parameter-sized buffer per device, summed over the mesh
    grads = jax.device_put(np.ones((b.mesh.size, params), np.float32), NamedSharding(b.mesh, P("data")))
    all_reduce = jax.jit(lambda g: g.sum(0), out_shardings=NamedSharding(b.mesh, P()))
    comm_s = median_of(lambda: all_reduce(grads))
print(json.dumps({"step_ms": ms(step_s), "compute_ms": ms(step_s - comm_s), "comm_ms": ms(comm_s), "parameters": int(params),
                  "input": "x".join(map(str, x.shape))}))
"""

# ESTIMATE inputs for 8 GPUs. Compute per step at batch 64 on one H100 80GB: ../shared/reference/performance.md
# (PyTorch eager, data resident on the GPU): cnn 60,000 images in 2.04 s (938 steps of 64); bi-LSTM (cuDNN, reviews
# of 256 tokens) 25,000 reviews in 2.27 s (391 steps of 64). The interconnect figures are assumptions, not measured.
H100_STEP_MS = {"cnn-mnist": 2040 / 938, "lstm-imdb": 2270 / 391}
NVLINK_BUS_GBPS = 350  # NCCL ring all-reduce bus bandwidth on an 8x H100 NVLink (NVSwitch) node, large messages
ALL_REDUCE_LATENCY_US = 30  # per all-reduce call (one DDP bucket: 25 MB holds either model's gradients)
GPUS = 8


def ring_all_reduce_ms(nbytes: int, ranks: int = GPUS) -> float:
    """A ring all-reduce sends and receives 2 (N-1)/N of the buffer per rank, plus a fixed latency."""
    return 1e3 * 2 * (ranks - 1) / ranks * nbytes / (NVLINK_BUS_GBPS * 1e9) + ALL_REDUCE_LATENCY_US / 1e3


def estimate_8_gpus(rows: list[dict]) -> list[dict]:
    """Per model: the H100 step at batch 64, and the 8-GPU step with the global batch kept at 64 (8 per GPU):
    compute between the ideal (1/8) and the overhead-bound (unchanged, as small models on a GPU are), plus the
    all-reduce of the measured parameter volume."""
    out = []
    for model, one_gpu in H100_STEP_MS.items():
        volume = next((4 * r["parameters"] for r in rows if r["model"] == model), None)
        if volume is None:
            continue
        comm = ring_all_reduce_ms(volume)
        out.append({"model": model, "all_reduce_MB": round(volume / 1e6, 2), "1 H100 step ms (batch 64)": round(one_gpu, 3),
                    "8-GPU all-reduce ms": round(comm, 3), "8-GPU step ms, ideal compute": round(one_gpu / GPUS + comm, 3),
                    "8-GPU step ms, overhead-bound compute": round(one_gpu + comm, 3),
                    "all-reduce share (overhead-bound)": f"{100 * comm / (one_gpu + comm):.1f} %"})
    return out


def measure(model: str, backend: str, processes: int, args) -> dict:
    common = {"model": model, "backend": backend, "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
              "warmup": args.warmup}
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if backend == "torch":
        launcher = () if processes == 1 else (sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                                               "--standalone", "--no-python")
        row = run_child(TORCH_RUN, {**common, "processes": processes}, launcher=launcher, env=threads)[0]
    else:  # JAX: devices of one process, each device's work on one thread
        flags = f"--xla_force_host_platform_device_count={processes} --xla_cpu_multi_thread_eigen=false"
        row = run_child(JAX_RUN, {**common, "processes": 1, "devices": processes},
                        env={**threads, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags})[0]
    return {"model": model, "backend": backend, "ranks": processes, "per_rank_batch": args.batch // processes, **row,
            "all_reduce_bytes": row["parameters"] * 4 if processes > 1 else 0}


def plot(rows: list[dict], path: Path) -> None:
    """Per model, a stacked bar per framework and rank count: compute, then all-reduce (one below the noise,
    negative, drawn as 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        names = [f"{r['backend']}\n{r['ranks']} rank(s)" for r in mine]
        ax.bar(names, [r["compute_ms"] for r in mine], color="tab:blue", label="compute")
        ax.bar(names, [max(r["comm_ms"], 0) for r in mine], bottom=[r["compute_ms"] for r in mine], color="tab:orange",
               label="gradient all-reduce")
        ax.set_title(model)
        ax.set_ylabel("ms per training step (global batch 64, median)")
        ax.legend()
    fig.suptitle("1 vs 2 data-parallel ranks on a 2-core CPU (1 thread per rank; a loaded machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["cnn-mnist", "lstm-imdb"])
    parser.add_argument("--backends", nargs="+", default=["torch", "jax"])
    parser.add_argument("--batch", type=int, default=64, help="the global batch")
    parser.add_argument("--seq-len", type=int, default=128, help="text: tokens per review")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per setting (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / NAME))
    args = parser.parse_args()

    rows = []
    for model in args.models:
        for backend in args.backends:
            for processes in (1, 2):
                rows.append(measure(model, backend, processes, args))
                rows[-1]["step_vs_1_rank"] = round(rows[-1]["step_ms"] / rows[-processes]["step_ms"], 2)
                print(rows[-1], flush=True)
    out = Path(args.out)
    versions = f"torch {version('torch')}, jax {version('jax')}, flax {version('flax')}"
    write_results(NAME, rows, ["model", "backend", "ranks", "per_rank_batch", "input", "step_ms", "step_vs_1_rank", "compute_ms",
                               "comm_ms", "parameters", "all_reduce_bytes"], out, versions=versions)
    estimate = estimate_8_gpus(rows)
    payload = json.loads((out / f"{NAME}.json").read_text())
    payload.update(settings=vars(args), estimate_8_gpus=estimate,
                   estimate_assumptions={"h100_step_ms": H100_STEP_MS, "nvlink_bus_GBps": NVLINK_BUS_GBPS,
                                         "all_reduce_latency_us": ALL_REDUCE_LATENCY_US, "gpus": GPUS})
    (out / f"{NAME}.json").write_text(json.dumps(payload, indent=2) + "\n")
    with open(out / f"{NAME}.md", "a") as f:
        f.write(f"\nMedians of {args.steps} steps after {args.warmup} warm-up steps, every setting in a fresh process on 1 thread "
                f"per rank; text {args.seq_len} tokens per review. The machine was loaded by other jobs (this ran at nice 19): "
                "read ratios, not absolute times. torch: communication = the step minus the same step under `no_sync()` "
                "(no all-reduce), alternated (a difference below the noise may come out negative); JAX: 2 CPU devices of one "
                "process, communication = an all-reduce of a parameter-sized buffer timed alone. all_reduce_bytes = "
                "trainable parameters x 4 (float32 gradients); step_vs_1_rank = the step's time over the 1-rank step's.\n")
        if estimate:
            f.write("\n## ESTIMATE (not measured): 8 GPUs, global batch 64 (8 per GPU)\n\n"
                    "Assumed: one H100 step at batch 64 from `../shared/reference/performance.md` (PyTorch eager, data on the GPU: "
                    f"cnn {H100_STEP_MS['cnn-mnist']:.2f} ms, bi-LSTM at 256 tokens {H100_STEP_MS['lstm-imdb']:.2f} ms); "
                    f"NCCL ring all-reduce over NVLink at {NVLINK_BUS_GBPS} GB/s bus bandwidth plus {ALL_REDUCE_LATENCY_US} µs "
                    f"per call; all-reduce time = 2 (N-1)/N x bytes / bandwidth + latency, N = {GPUS}. Compute per step lies between "
                    "the ideal (1/8 of one GPU's) and the overhead-bound (unchanged: these models are too small to fill a GPU "
                    "at 8 examples, see the reference's lessons).\n\n" + markdown_table(estimate, list(estimate[0])) + "\n")
    plot(rows, out / f"{NAME}.png")


if __name__ == "__main__":
    main()
