"""Does keeping the end of an IMDb review help? Same tokenizer, same 256-token budget, different rule.

    python benchmarks/truncation.py [--data-dir DIR] [--epochs 4]

A fastText-style probe (mean of word embeddings -> linear, Adam, 4 epochs) is trained per rule and scored
on the validation split held out of train (never on test). Cheap enough to compare many rules; writes
benchmarks/results/truncation.{json,md}."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    import torch

    from zoo.data import load_split
    from zoo.registry import get_spec
    from zoo.text import _tokenizer, truncate

    spec = get_spec("lstm-imdb")
    split = load_split("imdb", "train", args.data_dir)
    ids = [e.ids or [1] for e in _tokenizer(spec.tokenizer_json).encode_batch(split.inputs)]
    order = np.random.default_rng([0, 12345]).permutation(len(ids))  # the training pipeline's validation split
    val, train = order[:2500], order[2500:]
    rules = [("head", 256, 0), ("head_tail", 256, 128), ("head_tail", 256, 64), ("head_tail", 256, 0), ("head", 1024, 0)]
    rows = []
    for rule, max_len, head in rules:
        cut = [truncate(s, max_len, rule, head) for s in ids]
        accs = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            bag = torch.nn.EmbeddingBag(10000, 64, mode="mean")
            fc = torch.nn.Linear(64, 2)
            opt = torch.optim.Adam([*bag.parameters(), *fc.parameters()], lr=5e-3)

            def forward(index, cut=cut, bag=bag, fc=fc):
                flat = torch.tensor(np.concatenate([cut[i] for i in index]), dtype=torch.long)
                offsets = torch.tensor(np.cumsum([0] + [len(cut[i]) for i in index[:-1]]), dtype=torch.long)
                return fc(bag(flat, offsets))

            rng = np.random.default_rng(seed)
            for _ in range(args.epochs):
                perm = rng.permutation(train)
                for b in range(0, len(perm), 64):
                    index = perm[b : b + 64]
                    loss = torch.nn.functional.cross_entropy(forward(index), torch.from_numpy(split.labels[index]))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                accs.append(float((forward(val).argmax(1).numpy() == split.labels[val]).mean()))
        label = f"{rule} {max_len}" + (f" (first {head} + last {max_len - head})" if rule == "head_tail" else "")
        rows.append({"rule": label, "val_accuracy_%": round(100 * float(np.median(accs)), 2),
                     "per_seed_%": ", ".join(f"{100 * a:.2f}" for a in accs)})
        print(rows[-1], flush=True)
    write_results("truncation", rows, ["rule", "val_accuracy_%", "per_seed_%"])


if __name__ == "__main__":
    main()
