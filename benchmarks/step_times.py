"""Forward and training-step time per model and backend on one batch (default 64 x max_len for text).

    python benchmarks/step_times.py [--models lstm-imdb gru-imdb transformer-imdb] [--batch 64] [--repeats 5]

Writes benchmarks/results/step_times.{json,md}. Medians of `--repeats` runs after one warm-up (compile
excluded); ratios are jax / torch, measured in the same run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import median_seconds, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["lstm-imdb", "gru-imdb", "transformer-imdb"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import jax
    import torch

    import zoo
    from zoo.backends import get_backend
    from zoo.optim import OptimizerConfig

    torch.set_flush_denormal(True)
    rows = []
    for name in args.models:
        spec = zoo.registry.get_spec(name)
        rng = np.random.default_rng(0)
        if spec.preprocessing["kind"] == "text":
            x = rng.integers(2, spec.config["vocab_size"], size=(args.batch, spec.preprocessing["max_len"]))
        else:
            x = rng.normal(size=(args.batch, spec.preprocessing["height"], spec.preprocessing["width"], 1)).astype(np.float32)
        y = rng.integers(0, len(spec.labels), size=args.batch)
        row = {"model": name, "batch": "x".join(map(str, x.shape))}
        for backend in ("torch", "jax"):
            b = get_backend(backend)
            model = zoo.load(name, backend=backend, pretrained=False)
            row[f"{backend}_forward_s"] = round(median_seconds(lambda b=b, m=model: b.logits(m, x), args.repeats), 4)  # noqa: B023
            trainer = b.trainer(model, OptimizerConfig(name="adamw", lr=1e-3))
            row[f"{backend}_train_step_s"] = round(median_seconds(lambda t=trainer: t.step(x, y), args.repeats), 4)  # noqa: B023
        row["jax/torch forward"] = round(row["jax_forward_s"] / row["torch_forward_s"], 2)
        row["jax/torch step"] = round(row["jax_train_step_s"] / row["torch_train_step_s"], 2)
        rows.append(row)
        print(row, flush=True)
    write_results("step_times", rows, ["model", "batch", "torch_forward_s", "jax_forward_s", "jax/torch forward",
                                              "torch_train_step_s", "jax_train_step_s", "jax/torch step"],
                  versions=f"torch {torch.__version__}, jax {jax.__version__}")


if __name__ == "__main__":
    main()
