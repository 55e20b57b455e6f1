"""Shipped weights: bundled, verified, measured in both backends, and the measurement reproduces."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import zoo
from zoo.api import resolve_weights_file
from zoo.checkpoint import read_checkpoint
from zoo.data.pipeline import load_eval_split
from zoo.registry import get_spec, model_info
from zoo.train import evaluate

PRETRAINED = zoo.list_models(pretrained=True)
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", PRETRAINED)
def test_registry_entry_is_complete_and_the_file_verifies(name):
    info = model_info(name)
    w = info["weights"][info["default_tag"]]
    path = resolve_weights_file(name)  # checks the sha256
    assert read_checkpoint(path).arch == info["arch"]
    assert set(w["metrics"]) == {"torch", "jax"}, "test accuracy must be measured in each backend"
    for key in ("recipe", "config", "trained_in", "train_wall_time_s", "machine", "data_license", "sha256"):
        assert w.get(key), f"{name}: weights entry lacks {key}"


@pytest.mark.slow
@pytest.mark.parametrize("name", PRETRAINED)
def test_shipped_weights_reproduce_the_recorded_accuracy_in_both_backends(name, data_dir):
    info = model_info(name)
    recorded = info["weights"][info["default_tag"]]["metrics"]
    spec = get_spec(name)
    test = load_eval_split(spec, "test", data_dir)
    results = {b: evaluate(zoo.load(name, backend=b), b, test, spec) for b in ("torch", "jax")}
    for backend, result in results.items():
        assert result["n"] == recorded[backend]["n"]
        assert abs(result["accuracy"] - recorded[backend]["test_accuracy"]) < 1e-6, f"{name} [{backend}]"
    assert abs(results["torch"]["accuracy"] - results["jax"]["accuracy"]) <= 0.0005  # 0.05 percentage points
    agreement = (results["torch"]["predictions"] == results["jax"]["predictions"]).mean()
    assert agreement >= 0.999, f"{name}: backends agree on only {100 * agreement:.3f} % of predictions"


@pytest.mark.slow
def test_the_wheel_carries_the_weights_and_registry(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = tmp_path.glob("zoo_twins-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"zoo/registry.json", "zoo/weights/imdb-wordlevel-10k.json", "zoo/assets/mnist_test_first16.npz"} <= names
    for name in PRETRAINED:
        info = model_info(name)
        assert f"zoo/weights/{info['weights'][info['default_tag']]['file']}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "zoo = zoo.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith(("tests/", "recipes/", "runs/")) for n in names)
