"""Datasets through Hugging Face `datasets`: the Hub by default, or a local folder holding
`<name>/<split>.parquet` in the Hub's schema (`data_dir=` or `$ZOO_DATA_DIR`).

Images are decoded once into uint8 arrays and cached (`$ZOO_CACHE_DIR`, default ~/.cache/zoo), keyed by
the dataset's fingerprint, so training never does per-sample Python work."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = {
    "mnist": {"hub": "ylecun/mnist", "kind": "image", "input": "image", "license": "CC BY-SA 3.0"},
    "usps": {"hub": None, "kind": "image", "input": "image", "license": "no explicit license (AT&T Research / ESL)"},
    "imdb": {"hub": "stanfordnlp/imdb", "kind": "text", "input": "text", "license": "research use (Maas et al., ACL 2011)"},
    "rotten_tomatoes": {"hub": "cornell-movie-review-data/rotten_tomatoes", "kind": "text", "input": "text", "license": "CC BY 4.0",
                        "validation": "validation"},
}


@dataclass
class Split:
    name: str
    split: str
    inputs: np.ndarray | list[str]  # uint8 (N, H, W, C) images, or raw strings
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    value = data_dir or os.environ.get("ZOO_DATA_DIR")
    return Path(value) if value else None


def cache_dir() -> Path:
    return Path(os.environ.get("ZOO_CACHE_DIR", Path.home() / ".cache" / "zoo"))


def _load_hf(name: str, split: str, data_dir: Path | None):
    from datasets import load_dataset

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if data_dir is not None:
        path = data_dir / name / f"{split}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (data dir {data_dir} must hold <name>/<split>.parquet)")
        return load_dataset("parquet", data_files={split: str(path)}, split=split)
    hub = DATASETS[name]["hub"]
    if hub is None:
        raise FileNotFoundError(f"dataset {name!r} has no Hub copy here: pass data_dir= or set ZOO_DATA_DIR")
    return load_dataset(hub, split=split)


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Split:
    """One split as arrays. `split` is a split name of the dataset (e.g. 'train', 'test')."""
    ds = _load_hf(name, split, resolve_data_dir(data_dir))
    labels = np.asarray(ds["label"], dtype=np.int64)
    if DATASETS[name]["kind"] == "text":
        return Split(name, split, list(ds["text"]), labels)
    cached = cache_dir() / f"{name}-{split}-{ds._fingerprint}.npz"
    if cached.is_file():
        with np.load(cached) as f:
            return Split(name, split, f["images"], labels)
    from tqdm.auto import tqdm

    images = np.stack([np.asarray(im.convert("L")) for im in tqdm(ds["image"], desc=f"decoding {name}/{split}", leave=False)])
    images = images[..., None].astype(np.uint8)
    cached.parent.mkdir(parents=True, exist_ok=True)
    from ..atomic import atomic_path

    with atomic_path(cached, suffix=".npz") as tmp:
        np.savez(tmp, images=images)
    return Split(name, split, images, labels)
