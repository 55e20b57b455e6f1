import re
from pathlib import Path

from zoo.docs import model_table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_model_table_is_generated_from_the_registry():
    readme = (ROOT / "README.md").read_text()
    assert model_table() in readme, "README model table is stale: run `python -m zoo.docs --write`"


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
