"""Peak memory, wall time and accuracy of `zoo.pipeline` over the IMDb test reviews, per text model and backend,
each configuration in a fresh process (so one run's memory cannot hide in another's); and the batch-of-1
latency of `zoo.pipeline` against the backend's own `logits` on the preprocessed batch.

    python benchmarks/pipeline_memory.py [--reviews 25000] [--models lstm-imdb gru-imdb transformer-imdb]
        [--backends torch jax] [--batch-sizes N ...] [--repeats 50] [--data-dir DIR] [--out benchmarks/results] [--name NAME]

Writes OUT/NAME.{json,md,png} (NAME: pipeline_memory). `--reviews 200` is a smoke run (tests/test_pipeline.py
runs one); `--batch-sizes 16 64 256 --name pipeline_batch_sizes` compares batch sizes.
Fewer than 25,000 reviews are spread evenly over the test split (it is sorted by label). Peak RSS is
`VmHWM` of the fresh process: imports, model, the reviews as Python strings and the pipeline's own peak.
JAX wall times include compilation (one per padded batch shape), as a user's first call would."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_child, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT_MODELS = ["lstm-imdb", "gru-imdb", "transformer-imdb"]
RSS_TARGET_MB = 3 * 1024

# Run in a fresh interpreter per configuration; prints one JSON row. The peak is the process's own
# (`zoo.bench.peak_rss_kib`, VmHWM).
MEMORY_RUN = """
import json, sys, time
import numpy as np, pyarrow.parquet as pq
args = json.loads(sys.argv[1])
table = pq.read_table(args["imdb"], columns=["text", "label"])
pick = np.linspace(0, table.num_rows, args["reviews"], endpoint=False).astype(int)
texts = table.column("text").take(pick).to_pylist()
labels = np.asarray(table.column("label").take(pick).to_pylist())
del table
import zoo
from zoo.bench import peak_rss_kib
pipe = zoo.pipeline(args["model"], backend=args["backend"], batch_size=args["batch_size"], progress=False)
before = peak_rss_kib()
start = time.perf_counter()
pred = pipe(texts)
wall = time.perf_counter() - start
peak = peak_rss_kib()
print(json.dumps({"model": args["model"], "backend": args["backend"], "batch_size": pipe.batch_size, "reviews": len(texts),
                  "rss_before_call_mb": round(before / 1024), "peak_rss_mb": round(peak / 1024), "wall_s": round(wall, 1),
                  "reviews_per_s": round(len(texts) / wall, 1), "accuracy": round(float((pred.indices == labels).mean()), 4)}))
"""

# One process for all batch-of-1 timings. Pipeline and logits alternate, and the overhead is the median of
# their paired differences, so machine load hits both alike. PyTorch runs one thread here: on a loaded
# machine its OpenMP barrier waits add tens of ms of noise to a sub-ms call (to both sides alike).
LATENCY_RUN = """
import io, json, statistics, sys, time
import numpy as np, pyarrow.parquet as pq, torch
from PIL import Image
import zoo
torch.set_num_threads(1)
from zoo.backends import get_backend
args = json.loads(sys.argv[1])
review = pq.read_table(args["imdb"], columns=["text"]).column("text")[0].as_py()
png = pq.read_table(args["mnist"], columns=["image"]).column("image")[0].as_py()["bytes"]
digit = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
for model, item in ((args["image_model"], digit), (args["text_model"], review)):
    for backend in args["backends"]:
        pipe = zoo.pipeline(model, backend=backend)
        logits = get_backend(backend).logits
        batch = pipe.preprocess(item)
        pipe(item), logits(pipe.model, batch)  # warm-up: JAX compiles each shape once
        runs = {"pipeline": lambda: pipe(item), "logits": lambda: logits(pipe.model, batch),
                "preprocess_logits": lambda: logits(pipe.model, pipe.preprocess(item))}
        times = {name: [] for name in runs}
        for _ in range(args["repeats"]):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        ms = lambda seconds: round(seconds * 1e3, 3)
        paired = lambda a, b: ms(statistics.median(p - q for p, q in zip(times[a], times[b])))
        print(json.dumps({"model": model, "backend": backend, "input": "x".join(map(str, batch.shape)), "repeats": args["repeats"],
                          **{f"{name}_ms": ms(statistics.median(t)) for name, t in times.items()},
                          "overhead_ms": paired("pipeline", "logits"),
                          "overhead_vs_preprocess_logits_ms": paired("pipeline", "preprocess_logits")}))
"""


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['model']}\n{r['backend']} bs {r['batch_size']}" for r in rows]
    fig, (rss, speed) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows)), 4.5))
    rss.bar(names, [r["peak_rss_mb"] / 1024 for r in rows], color="tab:blue")
    rss.axhline(RSS_TARGET_MB / 1024, color="tab:red", linestyle="--", label="3 GiB target")
    rss.set_ylabel("peak RSS (GiB)")
    rss.legend()
    speed.bar(names, [r["reviews_per_s"] for r in rows], color="tab:green")
    speed.set_ylabel("reviews / s (JAX: compilation included)")
    for ax in (rss, speed):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"zoo.pipeline over {rows[0]['reviews']} IMDb test reviews, each run in a fresh process")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reviews", type=int, default=25000, help="IMDb test reviews per run (e.g. 200 for a smoke run)")
    parser.add_argument("--models", nargs="+", default=TEXT_MODELS)
    parser.add_argument("--backends", nargs="+", default=["torch", "jax"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[None], help="default: the pipeline's own")
    parser.add_argument("--repeats", type=int, default=50, help="batch-of-1 timings per model and backend (median)")
    parser.add_argument("--latency-models", nargs=2, default=["cnn-mnist", "transformer-imdb"], metavar=("IMAGE", "TEXT"))
    parser.add_argument("--data-dir", default=os.environ.get("ZOO_DATA_DIR") or str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="pipeline_memory", help="file names of the results")
    args = parser.parse_args()
    data = Path(args.data_dir)
    imdb, mnist = data / "imdb" / "test.parquet", data / "mnist" / "test.parquet"

    rows = []
    for model in args.models:
        for backend in args.backends:
            for batch_size in args.batch_sizes:
                row = run_child(MEMORY_RUN, {"imdb": str(imdb), "reviews": args.reviews, "model": model, "backend": backend,
                                             "batch_size": batch_size})[0]
                row["within_3_GiB"] = row["peak_rss_mb"] <= RSS_TARGET_MB
                rows.append(row)
                print(row, flush=True)
    latency = run_child(LATENCY_RUN, {"imdb": str(imdb), "mnist": str(mnist), "backends": args.backends, "repeats": args.repeats,
                                      "image_model": args.latency_models[0], "text_model": args.latency_models[1]})
    for row in latency:
        print(row, flush=True)

    versions = f"torch {version('torch')}, jax {version('jax')}, flax {version('flax')}"
    out = Path(args.out)
    write_results(args.name, rows, ["model", "backend", "batch_size", "reviews", "rss_before_call_mb", "peak_rss_mb",
                                            "within_3_GiB", "wall_s", "reviews_per_s", "accuracy"], out, versions=versions)
    # The batch-of-1 rows go in the same files: a second table in the Markdown, a second list in the JSON.
    payload = json.loads((out / f"{args.name}.json").read_text())
    payload["batch_of_1"] = latency
    (out / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    columns = ["model", "backend", "input", "repeats", "pipeline_ms", "logits_ms", "preprocess_logits_ms", "overhead_ms",
               "overhead_vs_preprocess_logits_ms"]
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in latency]
    with open(out / f"{args.name}.md", "a") as f:
        f.write("\n## Batch of 1: `zoo.pipeline(item)` vs the backend's `logits(model, batch)` on `batch = pipe.preprocess(item)` "
                "computed beforehand, and vs `logits(model, pipe.preprocess(item))` (tokenizing or normalising included)\n\n"
                f"Medians of {args.repeats} alternating runs; the overheads are medians of the paired differences. "
                "PyTorch on 1 thread.\n\n" + "\n".join(table) + "\n")
    print("\n".join(table))
    plot(rows, out / f"{args.name}.png")


if __name__ == "__main__":
    main()
