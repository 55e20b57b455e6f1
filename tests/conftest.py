import functools
import json
import os
import shutil
from pathlib import Path

import pytest

# Pin precision before any computation: float32 everywhere, no TF32, highest matmul precision in JAX.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import jax  # noqa: E402
import torch  # noqa: E402

from zoo.testing import in_slow_tier, recording_parity_report  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_flush_denormal(True)
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:  # `-n 2` on 2 cores: one thread per worker, not 2 x 2 threads fighting over them
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # and in the subprocesses a test starts (float64 runs, mutation suites, CLI runs)

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "tests" / ".parity-measurements"  # one JSON-lines file per worker; `python -m zoo.docs` merges them
# Only a run meant to produce the parity report records (and first clears old records): any other pytest run,
# even one started while a report run is going, leaves the measurements alone.
RECORDING = recording_parity_report()


def pytest_addoption(parser):
    parser.addoption("--all-weight-tags", action="store_true",
                     help="evaluate every shipped weights tag on its whole test split, not only each model's default")


def pytest_configure(config):
    if RECORDING and not hasattr(config, "workerinput"):  # the controller (or a run without xdist) starts a fresh report
        shutil.rmtree(MEASUREMENTS, ignore_errors=True)


BIG_MEMORY_UNIT = "big-memory parity tests"


def is_big_memory(nodeid: str) -> bool:
    """A parity test of a slow-tier model (`parity.tier`), as test_parity.py marks them `big_memory`: the scheduler
    sees only node ids, so the model is read from the test's parameter id (`test_logits_match[vit_b_16-single]`)."""
    return nodeid.startswith("tests/test_parity.py::") and not slow_tier_models().isdisjoint(
        nodeid.partition("[")[2].rstrip("]").split("-"))


def pytest_collection_modifyitems(config, items):
    """Slow tests first: xdist hands out single tests in this order, so the minutes-long runs start early and the last
    tests to finish are short ones (no worker idles while the other ends a long evaluation). And the scheduler's
    reading of node ids must agree with the marks, or a big test could slip out of its unit."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: collection order within each tier
    wrong = [i.nodeid for i in items if is_big_memory(i.nodeid) != (i.get_closest_marker("big_memory") is not None)]
    if wrong:
        raise pytest.UsageError(f"is_big_memory disagrees with the big_memory mark on: {', '.join(wrong[:5])}")


@functools.cache
def slow_tier_models() -> frozenset[str]:
    from zoo import list_models

    return frozenset(n for n in list_models() if in_slow_tier(n))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`-n 2`: xdist's load scheduling, except that the big-memory parity tests form one work unit. It is the largest,
    so xdist hands it out first: one worker runs them back to back (float64 runs first, while it is small) and the
    other never waits on their lock (tests/test_parity.py). xdist's own `--dist loadgroup` does the same with marks,
    but xdist 3.8 renames node ids through `item._nodeid`, which pytest 9 no longer reads, so it groups nothing."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BigMemoryTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return BIG_MEMORY_UNIT if is_big_memory(nodeid) else nodeid

    return BigMemoryTogether(config, log)


def shared_data_dir() -> Path | None:
    """`ZOO_DATA_DIR`, else ../shared/data beside the checkout (as laid out for CI)."""
    for candidate in (os.environ.get("ZOO_DATA_DIR"), ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist" / "test.parquet").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the real data (../shared/data or ZOO_DATA_DIR) is missing, and CI=true forbids skipping")
        pytest.skip("real data not found: set ZOO_DATA_DIR or place ../shared/data beside the checkout")
    return d


@pytest.fixture(scope="session")
def data_subset(data_dir, tmp_path_factory):
    """`data_subset({"imdb": {"train": 400, "test": 400}})`: a copy of the real data cut to that many rows per split,
    drawn by a seeded generator and kept in file order (IMDb's files are sorted by label: a head would be one class)."""

    def make(sizes: dict[str, dict[str, int]]) -> Path:
        import numpy as np
        import pyarrow.parquet as pq

        root = tmp_path_factory.mktemp("data-subset")
        for name, splits in sizes.items():
            (root / name).mkdir()
            for split, n in splits.items():
                table = pq.read_table(data_dir / name / f"{split}.parquet")
                rows = np.sort(np.random.default_rng(0).choice(table.num_rows, n, replace=False))
                pq.write_table(table.take(rows), root / name / f"{split}.parquet")
        return root

    return make


@pytest.fixture(scope="session")
def record_measurement():
    """Append a measured value to this worker's JSON-lines file, for the parity report (`python -m zoo.docs`)."""
    path = MEASUREMENTS / f"{WORKER or 'main'}.jsonl"

    def record(model: str, check: str, value: float) -> None:
        if not RECORDING:
            return
        MEASUREMENTS.mkdir(exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps({"model": model, "check": check, "max_abs_diff": value}) + "\n")

    return record
