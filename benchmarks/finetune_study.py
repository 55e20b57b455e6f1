"""Fine-tuning study (issue 10, first pass): what starting from the zoo's pretrained weights buys on a new
dataset, against the same architecture trained from scratch, on the real USPS digits and Rotten Tomatoes.

    python benchmarks/finetune_study.py --part usps --models cnn-mnist --seeds 3   # ~10 min on 2 cores
    python benchmarks/finetune_study.py --part rt --models lstm-imdb --seeds 3

Each point is a `zoo.train.fit` run (validation held out of train, or the source's own; the best validation
epoch kept; test measured once). Results: benchmarks/results/finetune_study.{jsonl,md}."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo.optim import OptimizerConfig  # noqa: E402
from zoo.train import TrainConfig, fit  # noqa: E402

RESULTS = Path(__file__).with_name("results")
PARTS = {  # dataset folder, sizes (per class for images, sentences for text; None: all), input rule, epochs per size
    "usps": {"source": "usps", "sizes": [10, 100, None], "adapt": {"resize": "mnist_frame"}, "epochs": {10: 30, 100: 15, None: 8}},
    "rt": {"source": "rotten_tomatoes", "sizes": [100, 1000, None], "adapt": None, "epochs": {100: 15, 1000: 8, None: 5}},
}


def run_point(part: str, model: str, size, init: str, seed: int, backend: str, data_dir: Path, freeze: str = "none") -> dict:
    spec = PARTS[part]
    data = {"source": str(data_dir / spec["source"])}
    if size is not None:
        data["max_per_class" if part == "usps" else "max_examples"] = size
    cfg = TrainConfig(model=model, backend=backend, epochs=spec["epochs"][size], batch_size=32 if size and size <= 100 else 64,
                      optimizer=OptimizerConfig(name="adamw", lr=1e-3, weight_decay=1e-2), seed=seed, data=data,
                      adapt=spec["adapt"], init_from=model if init == "finetuned" else None, freeze=freeze,
                      early_stopping_patience=5)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = fit(cfg, out, progress=False)
    return {"part": part, "model": model, "size": size or "all", "init": init, "freeze": freeze, "seed": seed, "backend": backend,
            "test_accuracy": summary["test_accuracy"], "best_val_accuracy": summary["best_val_accuracy"],
            "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"], "wall_s": round(time.perf_counter() - began, 1),
            "unk_rate": (summary.get("data") or {}).get("unk_rate")}


def zero_shot(model: str, data_dir: Path, backend: str) -> list[dict]:
    """The pretrained MNIST model on USPS test digits, framed like MNIST and naively resized."""
    import zoo
    from zoo.data.sources import load_source

    test = load_source(str(data_dir / "usps"), kind="image").test
    rows = []
    for rule in ("mnist_frame", "resize"):
        net = zoo.load(model, backend=backend)
        net.zoo_spec = net.zoo_spec.replace(preprocessing={**net.zoo_spec.preprocessing, "adapt": {"resize": rule}})
        predicted = zoo.pipeline(net)(test.inputs).indices
        rows.append({"part": "usps", "model": model, "size": 0, "init": f"zero-shot ({rule})", "freeze": "-", "seed": 0,
                     "backend": backend, "test_accuracy": float((predicted == test.labels).mean())})
    return rows


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["part"], r["model"], str(r["size"]), r["init"], r["freeze"], r["backend"]), []).append(r["test_accuracy"])
    out = ["| data | model | train size | start | freeze | backend | seeds | test accuracy (mean ± std) |", "|---" * 8 + "|"]
    for (part, model, size, init, freeze, backend), accs in sorted(groups.items()):
        out.append(f"| {part} | {model} | {size} | {init} | {freeze} | {backend} | {len(accs)} | "
                   f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs):.2f} % |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=list(PARTS), required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--sizes", nargs="*", help="subset of the part's sizes (numbers or 'all')")
    parser.add_argument("--data-dir", default=os.environ.get("ZOO_DATA_DIR", "../shared/data"))
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    sizes = PARTS[args.part]["sizes"]
    if args.sizes:
        sizes = [None if s == "all" else int(s) for s in args.sizes]
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / "finetune_study.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    new = []
    for model in args.models:
        if args.part == "usps":
            new += zero_shot(model, data_dir, args.backend)
        for size in sizes:
            for init in ("finetuned", "scratch"):
                for seed in range(args.seeds):
                    new.append(run_point(args.part, model, size, init, seed, args.backend, data_dir))
                    print(json.dumps(new[-1]), flush=True)
            if size == sizes[0]:  # the smallest size: frozen backbone too
                for seed in range(args.seeds):
                    new.append(run_point(args.part, model, size, "finetuned", seed, args.backend, data_dir, freeze="backbone"))
                    print(json.dumps(new[-1]), flush=True)
    rows += new
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (RESULTS / "finetune_study.md").write_text("# Fine-tuning study (first pass; `python benchmarks/finetune_study.py`)\n\n"
                                               + table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
