"""Shared fixtures. Real-data and parity tests fail loudly when their inputs are missing: CI has both."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def mtd_root_path() -> Path:
    """The real MTD dataset: $SUBSPACE_JAX_MTD, else ../shared/data/mtd beside the checkout."""
    env = os.environ.get("SUBSPACE_JAX_MTD")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "mtd"


@pytest.fixture(scope="session")
def mtd_root() -> Path:
    root = mtd_root_path()
    if not (root / "MT_Free" / "Imgs").is_dir():
        pytest.fail(
            f"MTD not found at {root}: set SUBSPACE_JAX_MTD to the folder holding MT_Free/, MT_Blowhole/, ..."
        )
    return root
