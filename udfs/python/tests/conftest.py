"""Fixtures: the shared text suite, the reclag CLI, one model trained from Python."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import reclag

ROOT = Path(__file__).resolve().parents[3]
SUITE = ROOT.parent / "shared" / "data" / "text_wordnet"


def _missing(what: str) -> None:
    # CI sets RECLAG_REQUIRE_SHARED=1: a missing input fails instead of skipping.
    if os.environ.get("RECLAG_REQUIRE_SHARED") == "1":
        pytest.fail(f"{what} is required (RECLAG_REQUIRE_SHARED=1) but missing")
    pytest.skip(f"{what} not found")


@pytest.fixture(scope="session")
def suite() -> Path:
    if not SUITE.exists():
        _missing(str(SUITE))
    return SUITE


@pytest.fixture(scope="session")
def cli():
    """Runs the reclag CLI (RECLAG_BIN, else target/debug/reclag) and returns stdout."""
    exe = Path(os.environ.get("RECLAG_BIN", ROOT / "target" / "debug" / "reclag"))
    if not exe.exists():
        _missing(f"the reclag binary {exe} (cargo build --workspace --bins)")

    def run(*args: str) -> str:
        r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 0, f"reclag {' '.join(map(str, args))}: {r.stderr}"
        return r.stdout

    return run


@pytest.fixture(scope="session")
def model_path(suite: Path, tmp_path_factory) -> Path:
    """A whitened model with calibration scores, trained from Python on a bounded
    sample of the suite's ID rows (so the test stays quick), saved for the CLI."""
    m = reclag.train(
        suite / "id_train.parquet", label="label", memories=16, max_rows_per_group=300, seed=7
    )
    p = tmp_path_factory.mktemp("model") / "m.parquet"
    m.save(p)
    return p
