import json
import os
import shutil
from pathlib import Path

import pytest

# Pin precision before any computation: float32 everywhere, no TF32, highest matmul precision in JAX.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import jax  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_flush_denormal(True)
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    torch.set_num_threads(1)  # `-n 2` on 2 cores: one thread per worker, not 2 x 2 threads fighting over them

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "tests" / ".parity-measurements"  # one JSON-lines file per worker; `python -m zoo.docs` merges them
# Only a run meant to produce the parity report records (and first clears old records): any other pytest run,
# even one started while a report run is going, leaves the measurements alone.
RECORDING = os.environ.get("ZOO_PARITY_REPORT") == "1"


def pytest_configure(config):
    if RECORDING and not hasattr(config, "workerinput"):  # the controller (or a run without xdist) starts a fresh report
        shutil.rmtree(MEASUREMENTS, ignore_errors=True)


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
