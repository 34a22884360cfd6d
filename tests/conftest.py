"""Shared fixtures; the shared constants are in tests/dlscale_testing.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dlscale_testing import TRAINER_PYTHON  # noqa: E402


@pytest.fixture(scope="session")
def trainer_python() -> str:
    if not TRAINER_PYTHON.exists():
        pytest.fail(f"no trainer environment at {TRAINER_PYTHON}: run `make envs`")
    return str(TRAINER_PYTHON)
