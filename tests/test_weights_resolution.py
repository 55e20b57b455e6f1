"""How a registry name becomes a verified file: checksums, missing files, files that are not what the
registry says, tags, Hub names, and the CLI commands that must refuse before touching anything."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import zoo
import zoo.registry as registry
from zoo.backends import get_backend
from zoo.checkpoint import CheckpointError
from zoo.hub import parse_hub_name

REAL_WEIGHTS = registry.WEIGHTS_DIR
REAL_REGISTRY = registry.REGISTRY_PATH
BACKENDS = ["torch", "jax"]


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    """A scratch copy of the registry and an empty weights folder, so a test can break them freely."""
    data = json.loads(REAL_REGISTRY.read_text())
    weights = tmp_path / "weights"
    weights.mkdir()
    path = tmp_path / "registry.json"

    def save():
        path.write_text(json.dumps(data))

    save()
    monkeypatch.setattr(registry, "REGISTRY_PATH", path)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    return SimpleNamespace(data=data, weights=weights, save=save, cnn=data["models"]["cnn-mnist"])


def test_bundled_file_whose_sha256_differs_from_the_registry_is_refused(scratch):
    """Catches a dropped checksum check: the corrupted file is still a valid safetensors file that would load."""
    entry = scratch.cnn["weights"]["v1"]
    path = scratch.weights / entry["file"]
    data = bytearray((REAL_WEIGHTS / entry["file"]).read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor
    path.write_bytes(data)
    for backend in BACKENDS:
        with pytest.raises(CheckpointError) as info:
            zoo.load("cnn-mnist", backend=backend)
        message = str(info.value)
        for needle in (str(path), sha256(path), entry["sha256"], "cnn-mnist.v1"):
            assert needle in message, message


def test_missing_bundled_file_names_the_file_and_the_tag(scratch):
    path = scratch.weights / scratch.cnn["weights"]["v1"]["file"]  # the weights folder is empty
    with pytest.raises(FileNotFoundError) as info:
        zoo.load("cnn-mnist", backend="torch")
    assert str(path) in str(info.value) and "cnn-mnist.v1" in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_registry_entry_pointing_at_another_architecture_is_refused(scratch, backend):
    """Catches loading by file alone: cnn-mnist's entry names the mlp file with its right sha256."""
    mlp = registry.model_info("mlp-mnist")["weights"]["v1"]
    shutil.copyfile(REAL_WEIGHTS / mlp["file"], scratch.weights / mlp["file"])
    scratch.cnn["weights"]["v1"].update(file=mlp["file"], sha256=mlp["sha256"])
    scratch.save()
    with pytest.raises(CheckpointError) as info:
        zoo.load("cnn-mnist", backend=backend)
    message = str(info.value)
    assert str(scratch.weights / mlp["file"]) in message and "'mlp'" in message and "cnn-mnist is 'cnn'" in message, message


@pytest.mark.parametrize("backend", BACKENDS)
def test_registry_entry_pointing_at_other_preprocessing_is_refused(scratch, backend):
    """Catches a loader that compares architecture and config but not preprocessing (same tensors, mean/std 0.5)."""
    source = REAL_WEIGHTS / scratch.cnn["weights"]["v1"]["file"]
    with safe_open(str(source), framework="numpy") as f:
        meta = dict(f.metadata())
    prep = json.loads(meta["preprocessing"])
    prep.update(mean=[0.5], std=[0.5])
    meta["preprocessing"] = json.dumps(prep, sort_keys=True)
    path = scratch.weights / "cnn-other-preprocessing.safetensors"
    save_file(load_file(str(source)), str(path), metadata=meta)
    scratch.cnn["weights"]["v1"].update(file=path.name, sha256=sha256(path))
    scratch.save()
    assert zoo.load(str(path), backend=backend) is not None, "the file itself is sound; only the registry pairing is wrong"
    with pytest.raises(CheckpointError) as info:
        zoo.load("cnn-mnist", backend=backend)
    message = str(info.value)
    assert str(path) in message and "'mean': [0.5]" in message and "'mean': [0.1307]" in message, message


def state(model, backend):
    return get_backend(backend).state_to_numpy(model)


def assert_same_tensors(got, expected):
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and np.array_equal(got[key], expected[key]), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_loading_by_tag_gives_that_tags_file(scratch, tmp_path, backend):
    """Catches a tag that is ignored (or falls back to the default): a second tag v0 holds a different file."""
    v1 = scratch.cnn["weights"]["v1"]
    shutil.copyfile(REAL_WEIGHTS / v1["file"], scratch.weights / v1["file"])
    v0 = scratch.weights / "cnn-mnist-v0.safetensors"
    zoo.save(zoo.load("cnn-mnist", backend="torch", pretrained=False, seed=7), v0)
    scratch.cnn["weights"]["v0"] = {**v1, "file": v0.name, "sha256": sha256(v0)}
    scratch.save()  # default tag stays v1

    expected_v1, expected_v0 = load_file(str(scratch.weights / v1["file"])), load_file(str(v0))
    assert_same_tensors(state(zoo.load("cnn-mnist.v1", backend=backend), backend), expected_v1)
    assert_same_tensors(state(zoo.load("cnn-mnist", backend=backend), backend), expected_v1)
    assert_same_tensors(state(zoo.load("cnn-mnist.v0", backend=backend), backend), expected_v0)
    with pytest.raises(LookupError, match=r"no pretrained tag 'v9' \(available tags: v0, v1\)"):
        zoo.load("cnn-mnist.v9", backend=backend)


def test_the_real_registry_tag_matches_the_default():
    """The shipped cnn-mnist.v1 and the default load the same tensors in both backends."""
    for backend in BACKENDS:
        assert_same_tensors(state(zoo.load("cnn-mnist.v1", backend=backend), backend),
                            state(zoo.load("cnn-mnist", backend=backend), backend))


@pytest.mark.parametrize("name, expected", [
    ("hf-hub:org/repo", ("org/repo", None)),
    ("hf_hub:org/repo@rev", ("org/repo", "rev")),  # the old spelling
    ("hf-hub:org/repo@0123abc", ("org/repo", "0123abc")),
])
def test_hub_names_parse(name, expected):
    assert parse_hub_name(name) == expected


@pytest.mark.parametrize("name", ["hf-hub:repo", "hf-hub:a/b/c", "hf-hub:/x", "hf-hub:org/", "hf_hub:org@rev"])
def test_malformed_hub_names_are_refused_before_any_download(name):
    """The message names the value and the expected form; zoo.load refuses it too (parsing comes before any
    request: a download attempt would fail differently, or hang on the network)."""
    with pytest.raises(ValueError, match="expected hf-hub:ORG/REPO") as info:
        parse_hub_name(name)
    assert name in str(info.value)
    with pytest.raises(ValueError, match=f"^{re.escape(name)}: expected hf-hub:ORG/REPO\\[@REVISION\\]$"):
        zoo.load(name, backend="torch")


# The CLI's refusals, in a fresh process as a user runs them.

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture()
def package_untouched():
    """`zoo eval --record` and `zoo ship` write into the real package: the registry file and the weights folder
    must be byte-for-byte unchanged after a refusal. Should a bug let one through, restore them, then fail."""
    before, files = REAL_REGISTRY.read_bytes(), set(REAL_WEIGHTS.iterdir())
    yield
    after, added = REAL_REGISTRY.read_bytes(), set(REAL_WEIGHTS.iterdir()) - files
    if after != before:
        REAL_REGISTRY.write_bytes(before)
    for path in added:
        path.unlink()
    assert after == before, "the refused command changed zoo/registry.json"
    assert not added, f"the refused command copied {sorted(map(str, added))} into {REAL_WEIGHTS}"


def random_file(tmp_path, name, seed=1):
    path = tmp_path / f"{name}-random.safetensors"
    zoo.save(zoo.load(name, backend="torch", pretrained=False, seed=seed), path)
    return path


def test_eval_record_of_another_file_is_refused_before_evaluating(tmp_path, data_dir, package_untouched):
    """Catches the refusal coming after the (minutes-long) evaluation, or not at all (which would record the
    other file's accuracy as the shipped weights')."""
    other = random_file(tmp_path, "cnn-mnist")
    result = run_cli("eval", "cnn-mnist", "--backend", "torch", "--weights", str(other), "--record", "--data-dir", str(data_dir))
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(other) in result.stderr and "different file" in result.stderr and "cnn-mnist.v1" in result.stderr
    assert "test_accuracy" not in result.stdout, "it evaluated the file before refusing"


def test_ship_of_another_architecture_is_refused(tmp_path, package_untouched):
    mlp = random_file(tmp_path, "mlp-mnist")
    result = run_cli("ship", "cnn-mnist", "--weights", str(mlp), "--tag", "vX", "--recipe", "r")
    assert result.returncode == 2 and str(mlp) in result.stderr and "architecture mlp" in result.stderr, result.stderr[-2000:]


def test_a_new_tag_with_its_own_preprocessing_coexists_with_v1(scratch, tmp_path, data_dir):
    """A v2 whose file differs from v1 in preprocessing ships as the new default while `cnn-mnist.v1` keeps
    loading exactly as before. Catches: files checked against the model's current spec instead of their tag's
    (v1 refused once the default moves), `zoo ship` not recording the tag's own spec, new models still built
    as v1, `zoo train cnn-mnist.v1` (reproducing v1) training v2's model."""
    from zoo.cli import main

    v1_file = scratch.cnn["weights"]["v1"]["file"]
    shutil.copy(REAL_WEIGHTS / v1_file, scratch.weights / v1_file)
    v1_preprocessing = registry.get_spec("cnn-mnist").preprocessing
    digit = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    before = {b: zoo.pipeline("cnn-mnist", backend=b)(digit).logits for b in BACKENDS}
    source = random_file(tmp_path, "cnn-mnist")
    with safe_open(str(source), framework="numpy") as f:
        meta = dict(f.metadata())
    meta["preprocessing"] = json.dumps({**json.loads(meta["preprocessing"]), "mean": [0.5]}, sort_keys=True)
    v2_path = tmp_path / "cnn-other-mean.safetensors"
    save_file(load_file(str(source)), str(v2_path), metadata=meta)
    assert main(["ship", "cnn-mnist", "--weights", str(v2_path), "--tag", "v2", "--recipe", "r"]) == 0

    assert registry.model_info("cnn-mnist")["default_tag"] == "v2"
    assert registry.get_spec("cnn-mnist").preprocessing["mean"] == [0.5]  # new models are built as v2
    assert registry.get_spec("cnn-mnist", "v1").preprocessing == v1_preprocessing
    for backend in BACKENDS:
        assert zoo.load("cnn-mnist", backend=backend).zoo_spec.preprocessing["mean"] == [0.5]
        v1 = zoo.pipeline("cnn-mnist.v1", backend=backend)
        assert v1.spec.preprocessing == v1_preprocessing
        np.testing.assert_array_equal(v1(digit).logits, before[backend])
    # Reproducing v1 after the default moved: `zoo train cnn-mnist.v1` trains v1's model on v1's preprocessing.
    from zoo.train import TrainConfig, prepare_model_and_data

    v1_model, _ = prepare_model_and_data(TrainConfig(model="cnn-mnist.v1", max_train_examples=8), "torch", data_dir)
    assert v1_model.zoo_spec.preprocessing == v1_preprocessing and v1_model.zoo_spec.name == "cnn-mnist"


def test_every_model_is_built_as_its_default_tag_and_every_tag_records_its_spec():
    """The registry's invariant: each weights entry carries the config and preprocessing it was built with, and
    the model's own (for new training, `pretrained=False`) are the default tag's."""
    for name in registry.list_models(pretrained=True):
        info = registry.model_info(name)
        for tag, entry in info["weights"].items():
            assert {"model_config", "preprocessing"} <= set(entry), f"{name}.{tag}"
        default = info["weights"][info["default_tag"]]
        assert (default["model_config"], default["preprocessing"]) == (info["config"], info["preprocessing"]), name


def test_eval_of_an_unknown_model_exits_2():
    result = run_cli("eval", "cnn-mnst", "--backend", "torch")
    assert result.returncode == 2 and "Unknown model 'cnn-mnst'" in result.stderr and "Did you mean: cnn-mnist" in result.stderr
