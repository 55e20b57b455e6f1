"""Shipped weights: bundled, verified, measured in both backends, and the measurement reproduces."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo.api import resolve_weights_file
from zoo.checkpoint import read_checkpoint
from zoo.data.pipeline import load_eval_split
from zoo.registry import get_spec, model_info, split_tag
from zoo.train import evaluate

PRETRAINED = zoo.list_models(pretrained=True)
TAGS = [f"{name}.{tag}" for name in PRETRAINED for tag in model_info(name)["weights"]]  # every shipped file, older tags too
ROOT = Path(__file__).resolve().parents[1]
SLICE_SIZE = {"mnist": 500, "imdb": 1000, "usps": 2007, "rotten_tomatoes": 1066}  # examples each fast check evaluates (USPS, RT: all)
FINETUNED = [n for n in PRETRAINED if model_info(n).get("finetuned_from")]
_slices = {}  # one encoded slice per dataset and preprocessing: tokenising all 25000 reviews takes seconds


def eval_slice(spec, data_dir):
    """Examples evenly spaced over the whole test split: IMDb's is all-neg then all-pos, so a head slice is one class."""
    key = (spec.dataset, spec.tokenizer_json, json.dumps(spec.preprocessing, sort_keys=True))
    if key not in _slices:
        test = load_eval_split(spec, "test", data_dir)
        _slices[key] = test.subset(np.linspace(0, len(test) - 1, SLICE_SIZE[spec.dataset]).round().astype(int))
    return _slices[key]


@pytest.mark.parametrize("tagged", TAGS)
def test_registry_entry_is_complete_and_the_file_verifies(tagged):
    name, tag = split_tag(tagged)
    info = model_info(name)
    w = info["weights"][tag]
    path = resolve_weights_file(name, tag)  # checks the sha256
    assert read_checkpoint(path).arch == info["arch"]
    assert set(w["metrics"]) == {"torch", "jax"}, "test accuracy must be measured in each backend"
    for key in ("recipe", "config", "trained_in", "train_wall_time_s", "machine", "data_license", "sha256"):
        assert w.get(key), f"{tagged}: weights entry lacks {key}"


@pytest.mark.parametrize("tagged", TAGS)
def test_shipped_weights_are_accurate_on_a_test_slice_in_both_backends(tagged, data_dir):
    """Fast tier: broken or mis-loaded weights fall far below the recorded accuracy (chance is 10 % / 50 %);
    an older tag read with the default's config or preprocessing too."""
    name, tag = split_tag(tagged)
    recorded = model_info(name)["weights"][tag]["metrics"]
    spec = get_spec(name, tag)
    data = eval_slice(spec, data_dir)
    assert set(data.labels) == set(range(len(spec.labels))), "the slice must hold every class"
    results = {b: evaluate(zoo.load(tagged, backend=b), b, data, spec) for b in ("torch", "jax")}
    for backend, result in results.items():
        expected = recorded[backend]["test_accuracy"]
        assert abs(result["accuracy"] - expected) <= 0.02, \
            f"{tagged} [{backend}]: {result['accuracy']:.4f} on the slice, recorded {expected}"
    disagree = int((results["torch"]["predictions"] != results["jax"]["predictions"]).sum())
    assert disagree <= 0.001 * len(data), f"{tagged}: backends disagree on {disagree} of {len(data)} predictions"


@pytest.mark.slow
@pytest.mark.parametrize("tagged", TAGS)
def test_shipped_weights_reproduce_the_recorded_accuracy_in_both_backends(tagged, data_dir, request):
    """The whole test split. An older tag (its slice is checked above) only with `--all-weight-tags`: IMDb's 25,000
    reviews take 3-5 minutes a tag in both backends, and `zoo eval --record` measured its figures on that file."""
    name, tag = split_tag(tagged)
    if tag != model_info(name)["default_tag"] and not request.config.getoption("--all-weight-tags"):
        pytest.skip(f"{tagged} is not the default tag: its full evaluation runs with --all-weight-tags")
    recorded = model_info(name)["weights"][tag]["metrics"]
    spec = get_spec(name, tag)
    test = load_eval_split(spec, "test", data_dir)
    results = {b: evaluate(zoo.load(tagged, backend=b), b, test, spec) for b in ("torch", "jax")}
    for backend, result in results.items():
        assert result["n"] == recorded[backend]["n"]
        assert abs(result["accuracy"] - recorded[backend]["test_accuracy"]) < 1e-6, f"{tagged} [{backend}]"
    assert abs(results["torch"]["accuracy"] - results["jax"]["accuracy"]) <= 0.0005  # 0.05 percentage points
    agreement = (results["torch"]["predictions"] == results["jax"]["predictions"]).mean()
    assert agreement >= 0.999, f"{tagged}: backends agree on only {100 * agreement:.3f} % of predictions"


@pytest.mark.parametrize("name", FINETUNED)
def test_a_shipped_finetuned_model_names_its_base_and_both_datasets(name, tmp_path):
    """Its recorded start is a shipped registry model of the same architecture; the file, the recipe and the
    Hub card all name that base, and the card states the licences of both datasets."""
    from zoo.data import DATASETS
    from zoo.hub import prepare_folder
    from zoo.registry import split_tag

    info = model_info(name)
    base, tag = split_tag(info["finetuned_from"])
    base_info = model_info(base)
    assert tag in base_info["weights"] and base_info["arch"] == info["arch"]
    assert {**base_info["weights"][tag]["model_config"], "num_classes": len(info["labels"])} == info["config"]
    weights = info["weights"][info["default_tag"]]
    assert weights["config"]["init_from"] == info["finetuned_from"], "the recipe must start from the recorded base"
    assert read_checkpoint(resolve_weights_file(name)).metadata["finetuned_from"] == info["finetuned_from"]
    card = (prepare_folder(name, tmp_path, f"me/{name}") / "README.md").read_text()
    assert f"base_model: {info['finetuned_from']}" in card
    for dataset in (info["dataset"], base_info["dataset"]):
        assert DATASETS[dataset]["license"] in card, f"{name}: the card lacks {dataset}'s licence"
    assert "test accuracy (torch)" in card and "test accuracy (jax)" in card


@pytest.mark.slow
def test_the_wheel_carries_the_weights_and_registry(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = tmp_path.glob("zoo_twins-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"zoo/registry.json", "zoo/weights/imdb-wordlevel-10k.json", "zoo/assets/mnist_test_first16.npz"} <= names
    assert {f"zoo/recipes/{name}.json" for name in PRETRAINED} <= names, "zoo train needs the recipes when installed"
    for name in PRETRAINED:
        info = model_info(name)
        assert f"zoo/weights/{info['weights'][info['default_tag']]['file']}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "zoo = zoo.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith(("tests/", "recipes/", "runs/")) for n in names)
