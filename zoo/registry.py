"""The registry: one JSON file (`zoo/registry.json`) is the single source of truth for model names,
architecture configs, preprocessing, labels, weights, checksums and measured metrics.

Specs are edited by hand; weights entries and metrics are written only by tools (`zoo eval --record`,
the training recipes), never typed by hand. Nothing here imports a framework.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGISTRY_PATH = Path(__file__).with_name("registry.json")
WEIGHTS_DIR = Path(__file__).with_name("weights")
LABELS_DIR = Path(__file__).with_name("assets") / "labels"


class UnknownModelError(KeyError):
    """A model name that the registry does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """What a model is: enough to build it, feed it and label its outputs."""

    name: str
    arch: str
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    labels: list[str]
    task: str = ""
    dataset: str = ""
    tokenizer_json: str | None = None  # text models: a Hugging Face `tokenizers` JSON document
    classifier: str = ""  # the head's parameter prefix (timm's `classifier`): replaced when the labels change
    finetuned_from: str | None = None  # the weights this model started from, when it has another head or data
    # where imported weights come from and what their publisher states (`zoo import`): source, source_weights,
    # source_url, license, recipe, reported_metrics. Travels with every save, so a licence is never lost.
    provenance: dict[str, str] | None = None

    # Flax keeps the spec as static data in the graph definition, so jit caches key on it: compare and
    # hash by value (two loads of one model share compiled code).
    def _key(self) -> str:
        key = self.__dict__.get("_cached_key")
        if key is None:
            import json

            key = json.dumps({k: getattr(self, k) for k in self.__dataclass_fields__}, sort_keys=True, default=str)
            object.__setattr__(self, "_cached_key", key)  # specs are treated as immutable
        return key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def replace(self, **changes: Any) -> ModelSpec:
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        values.update(changes)
        return ModelSpec(**values)


def _read() -> dict[str, Any]:
    with open(REGISTRY_PATH, encoding="utf-8") as f:
        return json.load(f)


def _entries() -> dict[str, dict[str, Any]]:
    return _read()["models"]


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style `pattern`; `pretrained=True` keeps those with weights."""
    names = sorted(n for n, e in _entries().items() if fnmatch.fnmatch(n, pattern))
    if pretrained:
        names = [n for n in names if _entries()[n].get("default_tag")]
    return names


def _entry(name: str) -> dict[str, Any]:
    entries = _entries()
    if name not in entries:
        close = difflib.get_close_matches(name, entries, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"Unknown model {name!r}.{hint} Known models: {', '.join(sorted(entries))}.")
    return entries[name]


def model_info(name: str) -> dict[str, Any]:
    """A copy of the registry entry for `name` (config, preprocessing, labels, weights, metrics)."""
    return {"name": name, **copy.deepcopy(_entry(name))}


def _labels(entry: dict[str, Any]) -> list[str]:
    """A list in the entry, or the name of a shared list in zoo/assets/labels/ (ImageNet's 1,000 classes)."""
    labels = entry.get("labels", [])
    if isinstance(labels, str):
        with open(LABELS_DIR / f"{labels}.json", encoding="utf-8") as f:
            return json.load(f)
    return list(labels)


def _bundled_tokenizer(entry: dict[str, Any]) -> str | None:
    if not entry.get("tokenizer"):
        return None
    return (WEIGHTS_DIR / entry["tokenizer"]).read_text(encoding="utf-8")


def get_spec(name: str, tag: str | None = None) -> ModelSpec:
    """The model as the registry describes it: with `tag`, as that tag's weights were built (each weights entry
    records its own `model_config` and `preprocessing`, so a v2 with another dropout or `max_len` coexists with
    v1); without, as the model is built today (the default tag's, for new training and `pretrained=False`)."""
    e = _entry(name)
    weights = weights_entry(name, tag) if tag else {}
    return ModelSpec(
        name=name,
        arch=e["arch"],
        config=copy.deepcopy(weights.get("model_config", e["config"])),
        preprocessing=copy.deepcopy(weights.get("preprocessing", e["preprocessing"])),
        labels=_labels(e),
        task=e.get("task", ""),
        dataset=e.get("dataset", ""),
        tokenizer_json=_bundled_tokenizer(e),
        classifier=e.get("classifier", ""),
        finetuned_from=e.get("finetuned_from"),
    )


def split_tag(name: str) -> tuple[str, str | None]:
    """`cnn-mnist.v1` -> (`cnn-mnist`, `v1`), the timm `arch.tag` convention."""
    base, dot, tag = name.partition(".")
    return base, (tag if dot else None)


def weights_entry(name: str, tag: str | None = None) -> dict[str, Any]:
    """The weights entry for `name` at `tag` (default tag when None); a clear error when none shipped."""
    e = _entry(name)
    tag = tag or e.get("default_tag")
    if not tag or tag not in e.get("weights", {}):
        available = ", ".join(sorted(e.get("weights", {}))) or "none yet"
        what = f"tag {tag!r}" if tag else "default weights"
        if e.get("import_from"):  # weights the zoo may not redistribute: each user imports them
            raise LookupError(
                f"Model {name!r} ships no weights: import them once with `zoo import {e['import_from']} --weights DEFAULT "
                f"--out {name}.safetensors` (needs torchvision and the internet), then zoo.load('{name}.safetensors'). "
                "Or use pretrained=False for a randomly initialised model."
            )
        raise LookupError(
            f"Model {name!r} has no pretrained {what} (available tags: {available}). "
            f"Use pretrained=False for a randomly initialised model, or train one with `zoo train {name}`."
        )
    return {"tag": tag, **copy.deepcopy(e["weights"][tag])}


def update_entry(name: str, mutate) -> None:
    """Apply `mutate(entry)` to one registry entry and rewrite the file atomically (tools only)."""
    data = _read()
    if name not in data["models"]:
        _entry(name)  # raises with suggestions
    mutate(data["models"][name])
    from .atomic import write_text_atomic

    write_text_atomic(REGISTRY_PATH, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
