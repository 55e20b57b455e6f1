import json
import os
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

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "tests" / ".parity-measurements.jsonl"


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
    """Append a measured max |diff| to a JSON-lines file, for the parity report in the closing notes."""
    MEASUREMENTS.unlink(missing_ok=True)

    def record(model: str, check: str, value: float) -> None:
        with open(MEASUREMENTS, "a") as f:
            f.write(json.dumps({"model": model, "check": check, "max_abs_diff": value}) + "\n")

    return record
