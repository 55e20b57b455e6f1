"""Every planted bug of the mutation suite (tests/mutations.py) is caught, by the tests the README's
table says catch it (reports/mutations.json, written by `python tests/mutations.py --write`)."""

import json

import pytest
from mutations import MUTATIONS, REPORT, ROOT, apply, run


@pytest.mark.slow
@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.id for m in MUTATIONS])
def test_planted_bug_is_caught(mutation):
    """A smoke of the study (`tests/mutations.py --write` runs every selected test): the tests the report says catch
    the bug, less the float64 run (a subprocess, most of the cost) where an in-process test catches it too."""
    reported = {r["id"]: r for r in json.loads(REPORT.read_text())["mutations"]}
    claimed = set(reported.get(mutation.id, {}).get("caught_by", []))
    assert claimed, f"{mutation.id}: reports/mutations.json names no test that catches it"
    claimed = {t for t in claimed if "test_float64_" not in t} or claimed
    result = run(mutation, sorted(claimed))
    assert claimed <= set(result["caught_by"]), (  # every claimed test still catches it
        f"{mutation.id}: reports/mutations.json claims {sorted(claimed - set(result['caught_by']))}; "
        "run `python tests/mutations.py --write && python -m zoo.docs --write`")


def test_every_mutation_applies_to_the_current_source(tmp_path):
    """Fast: each mutation's text is still in the source exactly once (else it would plant nothing)."""
    for mutation in MUTATIONS:
        target = tmp_path / mutation.id / mutation.file
        target.parent.mkdir(parents=True)
        target.write_text((ROOT / mutation.file).read_text())
        apply(mutation, tmp_path / mutation.id)
        assert target.read_text() != (ROOT / mutation.file).read_text()
    assert {r["id"] for r in json.loads(REPORT.read_text())["mutations"]} == {m.id for m in MUTATIONS}
