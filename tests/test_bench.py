"""`zoo bench`: every configuration measured in its own process, baselines beside the zoo's paths, ratios
computed the right way round, and the table, JSON and chart written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zoo import bench
from zoo.registry import get_spec, list_models, model_info


def test_default_models_cover_every_architecture_once():
    """Catches: a registry architecture left out of the default run, or the same network timed twice."""
    names = bench.distinct_models()
    key = lambda n: (get_spec(n).arch, json.dumps(get_spec(n).config, sort_keys=True))  # noqa: E731
    assert len({key(n) for n in names}) == len(names)
    trained_here = [n for n in list_models() if not model_info(n).get("import_from")]
    assert {key(n) for n in names} == {key(n) for n in trained_here}
    assert "mlp-mnist" in names and "cnn-mnist" in names and "cnn-usps" not in names


def test_an_imported_classifier_is_timed_on_its_own_input_without_article_baselines():
    """Catches: a torchvision twin fed one channel (the 28x28x1 default), or given the article's loop, whose
    in-memory epoch of 60,000 images at 224x224 would not fit."""
    x, y = bench.example_inputs(get_spec("resnet18"), 2)
    assert x.shape == (2, 224, 224, 3) and y.max() < 1000
    configs = bench.configurations(["resnet18", "cnn-mnist"], ["torch", "jax"], [8], ["train", "infer"], None, 5)
    assert {c["variant"] for c in configs if c["model"] == "resnet18"} == {"zoo"}
    assert {c["variant"] for c in configs if c["model"] == "cnn-mnist"} == {"zoo", "article-torch", "plain-nnx"}


def test_ratios_are_jax_over_torch_and_baseline_over_zoo():
    """Catches: a ratio inverted (a slower JAX would read as faster), or a baseline compared with the other backend."""
    rows = [{"model": "m", "task": "train", "batch": 64, "backend": b, "variant": v, "step_ms": ms}
            for b, v, ms in (("torch", "zoo", 10.0), ("torch", "article-torch", 15.0), ("jax", "zoo", 20.0), ("jax", "plain-nnx", 50.0))]
    (ratio,) = bench.ratio_rows(rows)
    assert ratio["jax/torch"] == 2.0
    assert ratio["zoo torch speed-up over article-torch"] == 1.5
    assert ratio["zoo jax speed-up over plain-nnx"] == 2.5


def test_unknown_model_backend_or_task_is_refused_by_name():
    for argv, word in ((["no-such-model"], "no-such-model"), (["mlp-mnist", "--backend", "tf"], "tf"),
                       (["mlp-mnist", "--task", "eval"], "eval")):
        run = subprocess.run([sys.executable, "-m", "zoo.cli", "bench", *argv], capture_output=True, text=True)
        assert run.returncode == 2 and word in run.stderr, run.stderr


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    subprocess.run([sys.executable, "-m", "zoo.cli", "bench", "mlp-mnist", "--repeats", "2", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    return out, json.loads((out / "bench.json").read_text())


def test_smoke_run_measures_every_variant_in_a_fresh_process(smoke):
    """Catches: a variant or task skipped, statistics out of order, samples/s not from the median, memory read
    from a parent (each child is a fresh interpreter: far below the pytest process's peak would not prove it,
    but an unset or zero figure would show), the environment not recorded."""
    out, result = smoke
    rows = result["rows"]
    assert [(r["task"], r["backend"], r["variant"]) for r in rows] == [
        ("train", "torch", "zoo"), ("train", "torch", "article-torch"), ("train", "jax", "zoo"), ("train", "jax", "plain-nnx"),
        ("infer", "torch", "zoo"), ("infer", "jax", "zoo")]
    for r in rows:
        assert 0 < r["min_ms"] <= r["step_ms"] <= r["max_ms"], r
        # the same median, up to both roundings: step_ms to 0.001 ms (0.2 % of a 0.25 ms step), samples_per_s to 0.1
        rounding = 0.0005 + 1.01 * r["step_ms"] * 0.05 / r["samples_per_s"]
        assert 64e3 / r["samples_per_s"] == pytest.approx(r["step_ms"], abs=rounding), r
        assert r["runs"] == 2 and r["steps_per_run"] >= 2
        assert 0 < r["first_step_s"] < r["time_to_first_step_s"]
        assert 100 < r["peak_rss_mb"] < 4000
        assert r["input"] == "28x28x1"
    assert result["environment"]["torch"]["torch"] and result["environment"]["jax"]["jax"]
    assert result["environment"]["torch"]["threads"] >= 1
    (ratio,) = [r for r in result["ratios"] if r["task"] == "train"]
    assert set(ratio) >= {"jax/torch", "zoo torch speed-up over article-torch", "zoo jax speed-up over plain-nnx"}
    md = (out / "bench.md").read_text()
    assert "| mlp-mnist | train | jax | plain-nnx | 64 |" in md and "## Ratios" in md
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_cut_short_keeps_every_configuration_it_finished(tmp_path):
    """Catches: results written only at the end, so a run stopped by a deadline (a lent GPU's minutes) loses all.
    The run is killed as soon as its first configuration is on disk (the chart is written last), while the second
    is still starting."""
    import time

    out = tmp_path / "bench"
    run = subprocess.Popen([sys.executable, "-m", "zoo.cli", "bench", "mlp-mnist", "--task", "infer", "--repeats", "2",
                            "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (out / "bench.png").exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before anything was written"
    finally:
        run.kill()
        run.wait()
    result = json.loads((out / "bench.json").read_text())
    assert [(r["model"], r["task"], r["backend"]) for r in result["rows"]] == [("mlp-mnist", "infer", "torch")]
    assert "| mlp-mnist | infer | torch | zoo |" in (out / "bench.md").read_text()
