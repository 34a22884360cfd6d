"""Shared test helpers: where the repository and its environments are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAINER_PYTHON = Path(os.environ.get("DLSCALE_TRAINER_PYTHON", REPO / ".venv" / "trainer" / "bin" / "python"))
DRIVER_BIN = Path(os.environ.get("DLSCALE_DRIVER_BIN", REPO / ".venv" / "driver" / "bin"))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def trainer_python() -> str:
    if not TRAINER_PYTHON.exists():
        pytest.fail(f"no trainer environment at {TRAINER_PYTHON}: run `make envs`")
    return str(TRAINER_PYTHON)
