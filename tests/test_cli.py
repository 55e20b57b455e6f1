import json
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

import zoo


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


def test_demo_runs_and_backends_agree():
    from zoo.demo import SAMPLES

    result = run_cli("demo")
    assert "identical predictions: True" in result.stdout
    true_labels = " ".join(str(v) for v in np.load(SAMPLES)["labels"])
    assert f"true label:   {true_labels}" in result.stdout
