import json
import re
from pathlib import Path

import pytest

import zoo
from zoo.docs import model_table, text_weights_table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_model_table_is_generated_from_the_registry():
    readme = (ROOT / "README.md").read_text()
    assert model_table() in readme, "README model table is stale: run `python -m zoo.docs --write`"
    assert text_weights_table() in readme, "README text-weights table is stale: run `python -m zoo.docs --write`"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"TEST_COMMAND='(.+)'", ci).group(1)
    assert f"```bash\n{command}\n```" in readme


def test_readme_quick_starts_run_as_written(tmp_path, monkeypatch):
    """The two quick starts (PyTorch first: the JAX one loads the file it saves) run verbatim."""
    readme = (ROOT / "README.md").read_text()
    blocks = [re.search(rf"## Quick start: {title}\n\n```python\n(.*?)```", readme, re.S).group(1)
              for title in ("PyTorch", r"JAX / Flax NNX")]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)
    a, b = (tmp_path / "cnn.safetensors").read_bytes(), (tmp_path / "cnn-from-jax.safetensors").read_bytes()
    from safetensors.numpy import load as load_bytes

    ta, tb = load_bytes(a), load_bytes(b)
    assert set(ta) == set(tb) and all(ta[k].tobytes() == tb[k].tobytes() for k in ta)


def test_readme_parity_and_mutation_tables_are_generated_from_the_reports():
    from zoo.docs import mutation_table, parity_table

    readme = (ROOT / "README.md").read_text()
    assert parity_table() in readme, "README parity table is stale: run `python -m zoo.docs --write`"
    assert mutation_table() in readme, "README mutation table is stale: run `python -m zoo.docs --write`"


def test_gpu_parity_table_and_gpu_bench_are_generated_from_their_files():
    """Catches: the README's GPU parity table or BENCHMARKS.md's GPU section edited by hand or left stale (CI has no
    GPU to re-measure them: they must come from the files a GPU run wrote), a GPU report missing a check."""
    from zoo.docs import BENCHMARKS, GPU_PARITY_COLUMNS, GPU_PARITY_REPORT, bench_section, gpu_parity_table

    assert gpu_parity_table() in (ROOT / "README.md").read_text(), "README GPU parity table is stale: run `python -m zoo.docs --write`"
    assert bench_section(gpu=True) in BENCHMARKS.read_text(), "BENCHMARKS.md GPU section is stale: run `python -m zoo.docs --write`"
    if GPU_PARITY_REPORT.is_file():
        report = json.loads(GPU_PARITY_REPORT.read_text())
        assert report["device"] and report["versions"]["torch"]
        for name, checks in report["measurements"].items():
            assert set(checks) == set(GPU_PARITY_COLUMNS), name


def test_gpu_parity_report_refuses_a_run_that_missed_a_model_or_check(tmp_path, monkeypatch):
    """Catches: a GPU report written from a cut-short run (a lent GPU's time limit), which would publish a table with
    models silently missing."""
    import zoo.docs as docs

    monkeypatch.setattr(docs, "MEASUREMENTS", tmp_path)
    models = docs.gpu_checked_models()
    rows = [{"model": name, "check": check, "max_abs_diff": 0.0} for name in models[1:] for check in docs.GPU_PARITY_COLUMNS]
    (tmp_path / "gw0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    last = rows[-1]
    with pytest.raises(SystemExit, match=rf"lacks {models[0]}: gpu_logits_batch, .*{last['model']}: {last['check']};"):
        docs.build_gpu_parity_report()


def test_benchmarks_tables_are_what_zoo_bench_measured_for_every_architecture():
    """Catches: BENCHMARKS.md edited by hand or left stale, an architecture or variant missing from the
    committed CPU run, a ratio that does not follow from the rows beside it."""
    from zoo.bench import VARIANTS, distinct_models, ratio_rows
    from zoo.docs import BENCH_RESULTS, BENCHMARKS, bench_section

    assert bench_section() in BENCHMARKS.read_text(), "BENCHMARKS.md is stale: run `python -m zoo.docs --write`"
    assert "(BENCHMARKS.md)" in (ROOT / "README.md").read_text()
    result = json.loads(BENCH_RESULTS.read_text())
    measured = {(r["model"], r["task"], r["backend"], r["variant"]) for r in result["rows"]}
    for name in distinct_models():
        for backend, variants in VARIANTS.items():
            assert {(name, "train", backend, v) for v in variants} | {(name, "infer", backend, "zoo")} <= measured, name
    assert result["ratios"] == ratio_rows(result["rows"])


def test_readme_finetuning_study_table_is_generated_from_the_study_results():
    from zoo.docs import FINETUNE_STUDY, finetune_table

    readme = (ROOT / "README.md").read_text()
    assert finetune_table() in readme, "README fine-tuning table is stale: run `python -m zoo.docs --write`"
    study = json.loads(FINETUNE_STUDY.read_text())
    points = {(p["part"], p["model"], str(p["size"]), p["init"], p["freeze"], p["backend"]): p for p in study["points"]}
    for name in zoo.list_models(pretrained=True):  # every shipped fine-tuned model: its base measured both ways at full data
        base = zoo.model_info(name).get("finetuned_from")
        if base:
            part = {"usps": "usps", "rotten_tomatoes": "rt"}[zoo.model_info(name)["dataset"]]
            for init in ("finetuned", "scratch"):
                point = points.get((part, base.split(".")[0], "all", init, "none", "torch"))
                assert point and point["seeds"] >= 2, (name, init)


def test_parity_report_measured_the_current_code_for_every_model():
    import json

    import zoo
    from zoo.docs import PARITY_REPORT, parity_source_digest, required_checks
    from zoo.testing import parity_settings

    report = json.loads(PARITY_REPORT.read_text())
    assert report["source_sha256"] == parity_source_digest(), (
        "reports/parity.json was measured on other code: run the parity suite, then `python -m zoo.docs --parity-report --write`")
    for name in zoo.list_models():
        assert set(required_checks(name)) <= set(report["measurements"][name]), name
        assert report["measurements"][name]["float64_seeds"] >= min(20, parity_settings(name).get("float64_seeds", 20)), name


def test_readme_finetuning_example_runs_as_written(tmp_path, monkeypatch, data_dir):
    """The Python fine-tuning example (JAX fine-tuning, PyTorch use) runs verbatim on the real USPS data."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Fine-tuning\n.*?```python\n.*?```.*?```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_DATA_DIR", str(data_dir))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["tuned"].zoo_spec.finetuned_from == "cnn-mnist.v1"
    assert namespace["summary"]["test_accuracy"] > 0.9
