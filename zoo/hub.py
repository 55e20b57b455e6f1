"""Weights on the Hugging Face Hub: `hf-hub:ORG/REPO[@REVISION]` (timm's convention).

Downloads go through `huggingface_hub` into its standard cache (HF_HOME / HF_HUB_CACHE), pinned to the
revision when one is given; a pinned commit already in the cache is served with no request at all, a
branch with one freshness check (HEAD). `HF_HUB_OFFLINE=1` works from the cache. A file whose sha256
differs from the one the registry knows is refused and removed from the cache."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, sha256_file

PREFIX = "hf-hub:"
CHECKPOINT_FILE = "model.safetensors"


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """`hf-hub:org/repo@rev` -> ("org/repo", "rev"); also accepts the old `hf_hub:` spelling."""
    for prefix in (PREFIX, "hf_hub:"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    repo_id, _, revision = name.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"{PREFIX}{name}: expected {PREFIX}ORG/REPO[@REVISION]")
    return repo_id, revision or None


def _evict(path: str) -> None:
    """Remove a downloaded file from the cache: the snapshot pointer and the blob it points to."""
    real = os.path.realpath(path)
    for p in {path, real}:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


def download(repo_id: str, revision: str | None = None, filename: str = CHECKPOINT_FILE, sha256: str | None = None) -> str:
    """Local path of `filename` from the Hub repo (cached); verified against `sha256` when given."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    try:
        path = hf_hub_download(repo_id, filename, revision=revision)
    except LocalEntryNotFoundError as e:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise FileNotFoundError(f"{where}: {filename} is not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it; "
                                    "load it once online (or unset HF_HUB_OFFLINE)") from None
        raise FileNotFoundError(f"{where}: could not download {filename} and it is not cached ({e})") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{where}: no such repository on the Hub (or no access to it)") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{where}: the repository has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{where}: the repository has no file {filename!r}") from None
    if sha256:
        digest = sha256_file(path)
        if digest != sha256:
            _evict(path)
            raise CheckpointError(f"{where}/{filename}: downloaded file has sha256 {digest}, the registry expects {sha256}; "
                                  "refused and removed from the cache")
    return path


def model_card(metadata: dict[str, str], repo_id: str, info: dict[str, Any] | None) -> str:
    """A Hub model card: YAML front matter plus usage for both backends."""
    from .data import DATASETS

    info = info or {}
    dataset = info.get("dataset", "")
    hub_dataset = DATASETS.get(dataset, {}).get("hub")
    tag = info.get("default_tag")
    weights = info.get("weights", {}).get(tag, {}) if tag else {}
    metrics = weights.get("metrics", {})
    task = info.get("task", "")
    license_id = {"mnist": "cc-by-sa-3.0"}.get(dataset, "other")
    front = ["---", "library_name: zoo-twins", f"license: {license_id}"]
    if hub_dataset:
        front += ["datasets:", f"  - {hub_dataset}"]
    front += ["tags:", "  - pytorch", "  - jax", "  - flax", "  - safetensors", "  - zoo-twins"]
    if task:
        front += [f"pipeline_tag: {task}"]
    if metrics:
        front += ["model-index:", f"  - name: {metadata.get('model', repo_id)}", "    results:"]
        for backend, m in sorted(metrics.items()):
            front += ["      - task:", f"          type: {task}", "        dataset:", f"          name: {dataset}",
                      f"          type: {hub_dataset or dataset}", "          split: test", "        metrics:",
                      "          - type: accuracy", f"            value: {m['test_accuracy']}",
                      f"            name: test accuracy ({backend})"]
    front.append("---")
    table = "\n".join(f"| {b} | {100 * m['test_accuracy']:.2f} % | {m.get('framework', '')} |" for b, m in sorted(metrics.items()))
    body = f"""
# {metadata.get('model', repo_id)}

A [zoo-twins](https://pypi.org/project/zoo-twins/) checkpoint: one `model.safetensors` that loads as a
PyTorch `nn.Module` and as a Flax NNX module with the same outputs. Architecture `{metadata.get('arch')}`,
config `{metadata.get('config')}`; preprocessing `{metadata.get('preprocessing')}` travels in the file.
{info.get('description', '')}

## Usage

```python
import zoo

torch_model = zoo.load("hf-hub:{repo_id}", backend="torch")   # torch.nn.Module
flax_model = zoo.load("hf-hub:{repo_id}", backend="jax")      # flax.nnx.Module
predictions = zoo.pipeline(flax_model)(inputs)                # raw inputs -> labels
```

## Test accuracy (measured by `zoo eval --record`)

| backend | accuracy | framework |
|---|---|---|
{table or '| – | not measured | |'}

Written by {metadata.get('written_by', '?')}, zoo {metadata.get('zoo_version', '?')}. Training data license:
{weights.get('data_license', info.get('license', 'see the dataset'))}. Recipe: `{weights.get('recipe', '–')}`.
"""
    return "\n".join(front) + "\n" + body


def prepare_folder(model_or_file: Any, folder: str | os.PathLike, repo_id: str) -> Path:
    """Write a Hub-ready folder: model.safetensors, config.json, README.md (model card)."""
    from . import api, registry
    from .checkpoint import read_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CHECKPOINT_FILE
    if isinstance(model_or_file, (str, os.PathLike)):
        source = str(model_or_file)
        if not os.path.exists(source) and not source.endswith(".safetensors"):
            source = api.resolve_weights_file(*registry.split_tag(source))
        shutil.copyfile(source, target)
    else:
        api.save(model_or_file, target)
    ckpt = read_checkpoint(target)
    name = ckpt.model
    info = registry.model_info(name) if name in registry.list_models() else None
    config = {"library_name": "zoo-twins", "format": ckpt.metadata["format"], "model": name, "architecture": ckpt.arch,
              "config": ckpt.config, "preprocessing": ckpt.preprocessing, "labels": ckpt.labels,
              "zoo_version": ckpt.metadata.get("zoo_version"), "written_by": ckpt.metadata.get("written_by"),
              "sha256": sha256_file(target)}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(ckpt.metadata, repo_id, info))
    return folder


def push(model_or_file: Any, repo_id: str, *, dry_run: bool = False, folder: str | None = None, revision: str | None = None,
         private: bool = False, commit_message: str | None = None) -> dict[str, str]:
    """Prepare the folder and upload it with `huggingface_hub` (unless `dry_run`)."""
    folder = prepare_folder(model_or_file, folder or tempfile.mkdtemp(prefix="zoo-push-"), repo_id)
    result = {"folder": str(folder)}
    if dry_run:
        return result
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                             commit_message=commit_message or f"Upload {json.loads((folder / 'config.json').read_text())['model']}")
    result.update(commit=info.oid, url=info.commit_url)
    return result
