"""Strict loading: every bad file gives a clear error naming the file and the problem."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import zoo
from zoo.checkpoint import CheckpointError, read_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "cnn.safetensors"
    zoo.save(zoo.load("cnn-mnist", backend="torch", pretrained=False), path)
    return path


def rewrite(good, tmp_path, mutate_tensors=None, mutate_meta=None, name="bad.safetensors"):
    from safetensors import safe_open

    with safe_open(str(good), framework="numpy") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(good))
    if mutate_tensors:
        mutate_tensors(tensors)
    if mutate_meta:
        mutate_meta(meta)
    path = tmp_path / name
    save_file(tensors, str(path), metadata=meta)
    return str(path)


def expect_error(path, backend, *needles):
    with pytest.raises(CheckpointError) as info:
        zoo.load(path, backend=backend)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message
    return message


BACKENDS = ["torch", "jax"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_key(good, tmp_path, backend):
    path = rewrite(good, tmp_path, lambda t: t.pop("fc2.bias"))
    expect_error(path, backend, "missing keys: fc2.bias")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unexpected_key(good, tmp_path, backend):
    path = rewrite(good, tmp_path, lambda t: t.update({"fc3.weight": np.zeros((2, 2), np.float32)}))
    expect_error(path, backend, "unexpected keys: fc3.weight")


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_shape(good, tmp_path, backend):
    path = rewrite(good, tmp_path, lambda t: t.update({"fc1.weight": np.zeros((512, 1000), np.float32)}))
    expect_error(path, backend, "fc1.weight: shape (512, 1000), expected (512, 1024)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_dtype(good, tmp_path, backend):
    path = rewrite(good, tmp_path, lambda t: t.update({"fc2.bias": t["fc2.bias"].astype(np.float16)}))
    expect_error(path, backend, "fc2.bias: dtype float16, expected float32")


def test_truncated_file(good, tmp_path):
    data = good.read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    expect_error(str(path), "torch", "truncated")


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors" * 4)
    expect_error(str(path), "jax", "not a safetensors file")


def test_header_that_is_not_json(tmp_path):
    body = b"{not json"
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    expect_error(str(path), "torch", "header is not valid JSON")


def test_unknown_architecture(good, tmp_path):
    path = rewrite(good, tmp_path, mutate_meta=lambda m: m.update({"arch": "os.system"}))
    with pytest.raises(ValueError, match="unknown architecture 'os.system'") as info:
        zoo.load(path, backend="torch")
    assert path in str(info.value)


def test_metadata_not_json(good, tmp_path):
    path = rewrite(good, tmp_path, mutate_meta=lambda m: m.update({"config": "{in_channels: 1"}))
    expect_error(path, "jax", "metadata key 'config' is not valid JSON")


def test_not_a_zoo_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path))
    expect_error(str(path), "torch", "not a zoo checkpoint")


def test_nan_weights_are_refused(good, tmp_path):
    def poison(t):
        t["conv1.bias"][3] = np.nan

    path = rewrite(good, tmp_path, poison)
    expect_error(path, "torch", "conv1.bias", "NaN/Inf")
    assert np.isnan(read_checkpoint(path, allow_nonfinite=True).tensors["conv1.bias"][3])


def test_save_is_atomic_and_leaves_no_temp_files(good, tmp_path):
    model = zoo.load(str(good), backend="jax")
    target = tmp_path / "out" / "m.safetensors"
    zoo.save(model, target)
    zoo.save(model, target)  # overwrite in place
    assert [p.name for p in target.parent.iterdir()] == ["m.safetensors"]
    meta = read_checkpoint(target).metadata
    assert meta["zoo_version"] == zoo.__version__ and meta["written_by"].startswith("jax ")
    assert json.loads(meta["config"]) == {"in_channels": 1, "num_classes": 10}


def _rewrite_header(good, tmp_path, mutate):
    data = good.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    mutate(header)
    raw = json.dumps(header).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return str(path)


def test_header_that_lies_about_offsets(good, tmp_path):
    def lie(header):
        header["fc2.bias"]["data_offsets"] = [0, 10**9]

    expect_error(_rewrite_header(good, tmp_path, lie), "torch", "fc2.bias", "claims bytes 0..1000000000")


def test_header_whose_shape_disagrees_with_its_offsets(good, tmp_path):
    def lie(header):
        header["fc2.bias"]["shape"] = [11]

    expect_error(_rewrite_header(good, tmp_path, lie), "jax", "not a valid safetensors file")


def test_oversized_header_length(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    expect_error(str(path), "torch", "exceeds the 100000000-byte limit")


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_of_another_architecture(good, tmp_path, backend):
    """An MLP's tensors under a file that claims to be a CNN."""
    mlp = tmp_path / "mlp.safetensors"
    zoo.save(zoo.load("mlp-mnist", backend="torch", pretrained=False), mlp)
    from safetensors import safe_open

    with safe_open(str(good), framework="numpy") as f:
        cnn_meta = dict(f.metadata())
    path = rewrite(mlp, tmp_path, mutate_meta=lambda m: m.update({k: cnn_meta[k] for k in ("arch", "config", "model")}))
    expect_error(path, backend, "missing keys: conv1.bias", "unexpected keys: layer1.bias")
