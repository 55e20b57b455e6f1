import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import zoo
import zoo.registry as registry

FIRST16 = Path(zoo.__file__).parent / "assets" / "mnist_test_first16.npz"  # the bundled MNIST test digits 0-15


def run_cli(*args, check=True):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, check=check)


def test_list_and_info():
    out = run_cli("list").stdout
    for name in zoo.list_models():
        assert name in out
    info = json.loads(run_cli("info", "cnn-mnist").stdout)
    assert info["arch"] == "cnn" and info["preprocessing"]["mean"] == [0.1307]


def test_unknown_model_exits_2_with_suggestion():
    result = run_cli("info", "resnet-mnst", check=False)
    assert result.returncode == 2 and "Did you mean: resnet-mnist" in result.stderr


def test_convert_round_trip_through_flax_msgpack(tmp_path):
    src = tmp_path / "resnet.safetensors"
    zoo.save(zoo.load("resnet-mnist", backend="torch", pretrained=False), src)
    run_cli("convert", str(src), str(tmp_path / "resnet.msgpack"))
    run_cli("convert", str(tmp_path / "resnet.msgpack"), str(tmp_path / "back.safetensors"))
    a, b = load_file(str(src)), load_file(str(tmp_path / "back.safetensors"))
    assert set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() and a[k].dtype == b[k].dtype for k in a)


def test_convert_refuses_garbage(tmp_path):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x00garbage")
    result = run_cli("convert", str(bad), str(tmp_path / "x.safetensors"), check=False)
    assert result.returncode == 2 and str(bad) in result.stderr


def demo_lines(stdout: str) -> dict[str, list[str]]:
    """The label rows the demo prints: 'true label', 'torch says', 'jax says' -> list of labels."""
    return {m[1]: m[2].split() for m in re.finditer(r"^(true label|torch says|jax says): +(.*)$", stdout, re.M)}


def test_demo_predicts_the_true_labels_in_both_backends():
    result = run_cli("demo", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    true_labels = [str(v) for v in np.load(FIRST16)["labels"]]
    lines = demo_lines(result.stdout)
    assert lines["true label"] == lines["torch says"] == lines["jax says"] == true_labels
    assert "identical predictions: True" in result.stdout


def scratch_registry(tmp_path, monkeypatch, mutate_cnn) -> Path:
    """Point the registry at tmp copies whose cnn-mnist entry `mutate_cnn` rewrites; returns the weights folder."""
    weights = tmp_path / "weights"
    weights.mkdir()
    data = json.loads(registry.REGISTRY_PATH.read_text())
    mutate_cnn(data["models"]["cnn-mnist"], weights)
    (tmp_path / "registry.json").write_text(json.dumps(data))
    monkeypatch.setattr(registry, "REGISTRY_PATH", tmp_path / "registry.json")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)  # the bundled digits
    return weights


def test_demo_fails_when_the_pretrained_weights_are_wrong(tmp_path, monkeypatch, capsys):
    from zoo.checkpoint import sha256_file
    from zoo.demo import run_demo

    def ship_random_init(entry, weights):  # a registry entry that verifies, but whose weights never learned anything
        path = zoo.save(zoo.load("cnn-mnist", backend="torch", pretrained=False), weights / "cnn-mnist-random.safetensors")
        entry["weights"][entry["default_tag"]].update(file=path.name, sha256=sha256_file(path))

    scratch_registry(tmp_path, monkeypatch, ship_random_init)
    assert run_demo("cnn-mnist") == 1
    out = capsys.readouterr()
    assert "cnn-mnist: pretrained weights" in out.out
    assert "identical predictions: True" in out.out  # the backends agree: only wrongness can fail it
    lines = demo_lines(out.out)
    for backend in ("torch", "jax"):
        wrong = sum(a != b for a, b in zip(lines[f"{backend} says"], lines["true label"], strict=True))
        assert wrong > 0 and f"{backend}: {wrong} of 16 predictions are wrong" in out.err


def test_demo_without_shipped_weights_only_requires_agreement(tmp_path, monkeypatch, capsys):
    from zoo.demo import run_demo

    scratch_registry(tmp_path, monkeypatch, lambda entry, _: entry.update(default_tag=None, weights={}))
    assert run_demo("cnn-mnist") == 0
    out = capsys.readouterr()
    lines = demo_lines(out.out)
    assert lines["torch says"] == lines["jax says"] != lines["true label"]  # random weights: agreeing, and wrong
    assert "random initialisation: predictions cannot be right, so only backend agreement is checked" in out.out
    assert out.err == ""


def test_demo_digits_are_the_first_16_test_digits_from_every_source(data_dir, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from zoo.data import load_split
    from zoo.demo import demo_digits

    bundled = np.load(FIRST16)
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    images, labels = demo_digits()
    np.testing.assert_array_equal(images, bundled["images"])
    np.testing.assert_array_equal(labels, bundled["labels"])
    images, labels = demo_digits(str(data_dir))  # the real split: its first 16 are the bundled digits
    np.testing.assert_array_equal(images.reshape(16, 28, 28), bundled["images"])
    np.testing.assert_array_equal(labels, bundled["labels"])
    # $ZOO_DATA_DIR: a scratch split starting at test digit 16, so reading anything else would show
    (tmp_path / "mnist").mkdir()
    table = pq.read_table(data_dir / "mnist" / "test.parquet")
    pq.write_table(table.slice(16, 16), tmp_path / "mnist" / "test.parquet")
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    images, labels = demo_digits()
    real = load_split("mnist", "test", data_dir)
    np.testing.assert_array_equal(images, real.inputs[16:32])
    np.testing.assert_array_equal(labels, real.labels[16:32])
