"""Weights on the Hugging Face Hub: `hf-hub:ORG/REPO[@REVISION]` (timm's convention).

Downloads go through `huggingface_hub` into its standard cache (HF_HOME / HF_HUB_CACHE), pinned to the
revision when one is given; a pinned commit already in the cache is served with no request at all, a
branch with one freshness check (HEAD). `HF_HUB_OFFLINE=1` works from the cache. A file whose sha256
differs from the one the registry knows is refused and removed from the cache.

A pushed model card claims test metrics and a recipe only for the file they were measured on (see
`prepare_folder`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .checkpoint import sha256_file
from .fetch import CHECKPOINT_FILE, PREFIX, download, parse_hub_name, resolve_weights_file  # noqa: F401 (public here too)


def find_registry_weights(digest: str) -> tuple[str, dict[str, Any]] | None:
    """(`name.tag`, weights entry) of the registry weights whose sha256 is `digest`, any model and any tag;
    None when the file is none of them. Only that very file may carry the entry's metrics and recipe."""
    from . import registry

    for name in registry.list_models():
        for tag, entry in registry.model_info(name).get("weights", {}).items():
            if entry.get("sha256") == digest:
                return f"{name}.{tag}", entry
    return None


def measure(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Metrics of the file at `path` on the full test split of its dataset, in both backends
    (what `zoo push --evaluate` reports)."""
    from . import api
    from .data.pipeline import load_eval_split
    from .train import evaluate, recorded_metrics

    metrics, test = {}, None
    for backend in ("torch", "jax"):
        model = api.load(str(path), backend=backend)
        spec = model.zoo_spec
        if not spec.dataset:
            raise ValueError(f"{path}: the file's metadata names no dataset, so there is no test split to evaluate it on")
        if test is None:  # one split serves both backends
            test = load_eval_split(spec, "test", data_dir)
        metrics[backend] = recorded_metrics(evaluate(model, backend, test, spec), backend)
    return metrics


def base_dataset(finetuned_from: str | None) -> str | None:
    """The dataset a fine-tuned model's base was trained on, where the base is a registry model."""
    from . import registry

    if not finetuned_from:
        return None
    try:
        return registry.model_info(registry.split_tag(finetuned_from)[0]).get("dataset") or None
    except registry.UnknownModelError:  # a Hub id or a file: its dataset is not known here
        return None


def versions_table(registry_ref: str | None) -> str:
    """For a registry file of a model with several tags: every tag's recorded test accuracy, this one marked, so a
    v2 card shows what v1 measured (each figure belongs to its own file, named by its sha256)."""
    if not registry_ref:
        return ""
    from . import registry

    name, this_tag = registry.split_tag(registry_ref)
    info = registry.model_info(name)
    if len(info["weights"]) < 2:
        return ""
    rows = []
    for tag, w in sorted(info["weights"].items()):
        acc = {b: f"{100 * m['test_accuracy']:.2f} %" for b, m in w.get("metrics", {}).items()}
        role = "this file" if tag == this_tag else ("default" if tag == info["default_tag"] else "older")
        rows.append(f"| `{name}.{tag}` | {role} | {acc.get('torch', '–')} | {acc.get('jax', '–')} | `{w['sha256'][:12]}` |")
    return ("\n## All versions of this model\n\nEach recorded by `zoo eval --record` on its own file; load any with "
            f"`zoo.load(\"{name}.TAG\")`.\n\n| weights | | test acc. (torch) | test acc. (jax) | sha256 |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def imported_from(metadata: dict[str, str]) -> dict[str, Any] | None:
    """What a file imported by `zoo import` records about its weights' origin (zoo.torchvision_import): source,
    weights, URL, licence, recipe and the accuracy its source reports; None for any other file."""
    if not metadata.get("source_url"):
        return None
    return {"source": metadata.get("source"), "weights": metadata.get("source_weights"), "url": metadata["source_url"],
            "license": metadata.get("license"), "recipe": metadata.get("recipe") or None,
            "reported_metrics": json.loads(metadata.get("reported_metrics") or "{}")}


def imported_section(origin: dict[str, Any] | None) -> str:
    """The card's account of imported weights: where they come from, their licence, and the accuracy their source
    reports, marked as not measured by the zoo."""
    if origin is None:
        return ""
    reported = origin["reported_metrics"]
    who = reported.get("reported_by", "the source")
    rows = "\n".join(f"| {dataset} | {metric} | {value} |" for dataset, metrics in sorted(reported.get("metrics", {}).items())
                     for metric, value in sorted(metrics.items()))
    table = f"| dataset | metric | value (%) |\n|---|---|---|\n{rows}" if rows else "The source reports no accuracy."
    recipe = f" Training recipe: {origin['recipe']}." if origin.get("recipe") else ""
    return (f"\n## Source and licence\n\nWeights `{origin['weights']}` imported from `{origin['source']}` by `zoo import`, "
            f"fetched from {origin['url']}.{recipe}\n\nLicence of the weights: {origin['license']}.\n\n"
            f"## Accuracy reported by {who.split()[0]} (not measured by the zoo)\n\n"
            f"As {who} states it (`{reported.get('where', '?')}`); the zoo has not evaluated these weights.\n\n{table}\n")


def model_card(metadata: dict[str, str], repo_id: str, info: dict[str, Any] | None, provenance: dict[str, Any]) -> str:
    """A Hub model card: YAML front matter plus usage for both backends. Metrics and recipe come only from
    `provenance` (see `prepare_folder`): a card never claims figures measured on another file."""
    from .data import DATASETS

    info = info or {}
    model = metadata.get("model", repo_id)
    dataset = metadata.get("dataset") or info.get("dataset", "")
    task = metadata.get("task") or info.get("task", "")
    hub_dataset = DATASETS.get(dataset, {}).get("hub")
    metrics = provenance.get("metrics") or {}
    source, registry_ref, recipe = provenance.get("metrics_source"), provenance.get("registry_weights"), provenance.get("recipe")
    datasets = [dataset] + [d for d in [base_dataset(metadata.get("finetuned_from"))] if d and d != dataset]  # this, then the base's
    license_id = "cc-by-sa-3.0" if datasets == ["mnist"] else "other"
    front = ["---", "library_name: zoo-twins", f"license: {license_id}"]
    if any(DATASETS.get(d, {}).get("hub") for d in datasets):
        front += ["datasets:"] + [f"  - {DATASETS[d]['hub']}" for d in datasets if DATASETS.get(d, {}).get("hub")]
    front += ["tags:", "  - pytorch", "  - jax", "  - flax", "  - safetensors", "  - zoo-twins"]
    if task:
        front += [f"pipeline_tag: {task}"]
    if metadata.get("finetuned_from"):  # the Hub's own field for fine-tuned models
        front += [f"base_model: {metadata['finetuned_from']}"]
    if metrics:
        front += ["model-index:", f"  - name: {model}", "    results:"]
        for backend, m in sorted(metrics.items()):
            front += ["      - task:", f"          type: {task}", "        dataset:", f"          name: {dataset}",
                      f"          type: {hub_dataset or dataset}", "          split: test", "        metrics:",
                      "          - type: accuracy", f"            value: {m['test_accuracy']}",
                      f"            name: test accuracy ({backend})"]
    front.append("---")

    if metrics:
        if source == "measured at push":
            how = f"Measured on this very file by `zoo push --evaluate` at push time, on the full {dataset} test split."
        else:
            how = f"This file is the registry's `{registry_ref}` (same sha256); figures recorded for it by `zoo eval --record`."
        rows = "\n".join(f"| {b} | {100 * m['test_accuracy']:.2f} % | {m.get('n', '?')} | {m.get('framework', '?')} |"
                         for b, m in sorted(metrics.items()))
        results = f"## Test accuracy\n\n{how}\n\n| backend | accuracy | n | framework |\n|---|---|---|---|\n{rows}\n"
    elif registry_ref:
        results = (f"## Evaluation\n\nThis file is the registry's `{registry_ref}` (same sha256), but it has not been evaluated yet "
                   "(no `zoo eval --record`, no `zoo push --evaluate`), so this card reports no test metrics.\n")
    else:
        results = ("## Evaluation\n\nThis file was not evaluated: its sha256 matches none of the registry's shipped weights and it "
                   "was pushed without `zoo push --evaluate`, so this card reports no test metrics.\n")
    results += versions_table(registry_ref) + imported_section(imported_from(metadata))
    footer = [f"File sha256 `{provenance.get('sha256')}`.",
              f"Written by {metadata.get('written_by', '?')}, zoo {metadata.get('zoo_version', '?')}."]
    for d in datasets:
        if DATASETS.get(d, {}).get("license"):
            footer.append(f"{'Dataset' if d == dataset else 'Base model trained on'} {d}: {DATASETS[d]['license']}.")
    if recipe:  # only the registry's own file has a known recipe
        footer.append(f"Recipe (reproduces `{registry_ref}`): `{recipe}`.")
    finetuned = ""
    if metadata.get("finetuned_from"):
        finetuned = f"\nFine-tuned from `{metadata['finetuned_from']}` (labels: {metadata.get('labels')})."
    body = f"""
# {model}

A [zoo-twins](https://pypi.org/project/zoo-twins/) checkpoint: one `model.safetensors` that loads as a
PyTorch `nn.Module` and as a Flax NNX module with the same outputs. Architecture `{metadata.get('arch')}`,
config `{metadata.get('config')}`; preprocessing `{metadata.get('preprocessing')}` travels in the file.
{info.get('description', '')}{finetuned}

## Usage

```python
import zoo

torch_model = zoo.load("hf-hub:{repo_id}", backend="torch")   # torch.nn.Module
flax_model = zoo.load("hf-hub:{repo_id}", backend="jax")      # flax.nnx.Module
predictions = zoo.pipeline(flax_model)(inputs)                # raw inputs -> labels
```

{results}
{" ".join(footer)}
"""
    return "\n".join(front) + "\n" + body


def prepare_folder(model_or_file: Any, folder: str | os.PathLike, repo_id: str, *, evaluate: bool = False,
                   data_dir: str | os.PathLike | None = None) -> Path:
    """Write a Hub-ready folder: model.safetensors, config.json, README.md (model card).

    The card carries metrics and a recipe only when they are about this file: its sha256 is that of a
    registry weights entry (that entry's recorded metrics and recipe), or `evaluate=True` measured it on
    its dataset's test split in both backends. Otherwise it says the file was not evaluated."""
    from . import api, registry
    from .checkpoint import read_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CHECKPOINT_FILE
    if isinstance(model_or_file, (str, os.PathLike)):
        source = str(model_or_file)
        if not os.path.exists(source) and not source.endswith(".safetensors"):
            source = resolve_weights_file(*registry.split_tag(source))
        shutil.copyfile(source, target)
    else:
        api.save(model_or_file, target)
    ckpt = read_checkpoint(target)
    name = ckpt.model
    info = registry.model_info(name) if name in registry.list_models() else None
    digest = sha256_file(target)
    registry_ref, entry = find_registry_weights(digest) or (None, {})
    if evaluate:
        metrics, metrics_source = measure(target, data_dir), "measured at push"
    elif entry.get("metrics"):
        metrics, metrics_source = entry["metrics"], f"registry:{registry_ref}"
    else:
        metrics, metrics_source = None, None
    provenance = {"sha256": digest, "registry_weights": registry_ref, "recipe": entry.get("recipe"),
                  "metrics_source": metrics_source, "metrics": metrics}
    config = {"library_name": "zoo-twins", "format": ckpt.metadata["format"], "model": name, "architecture": ckpt.arch,
              "config": ckpt.config, "preprocessing": ckpt.preprocessing, "labels": ckpt.labels,
              "zoo_version": ckpt.metadata.get("zoo_version"), "written_by": ckpt.metadata.get("written_by"), **provenance,
              "imported_from": imported_from(ckpt.metadata)}
    from .atomic import write_text_atomic

    write_text_atomic(folder / "config.json", json.dumps(config, indent=2) + "\n")
    write_text_atomic(folder / "README.md", model_card(ckpt.metadata, repo_id, info, provenance))
    return folder


def push(model_or_file: Any, repo_id: str, *, dry_run: bool = False, folder: str | None = None, revision: str | None = None,
         private: bool = False, commit_message: str | None = None, evaluate: bool = False,
         data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Prepare the folder and upload it with `huggingface_hub` (unless `dry_run`). `evaluate=True` measures
    the file on its test split in both backends first (data from `data_dir`, else $ZOO_DATA_DIR, else the Hub)."""
    folder = prepare_folder(model_or_file, folder or tempfile.mkdtemp(prefix="zoo-push-"), repo_id, evaluate=evaluate, data_dir=data_dir)
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
