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
