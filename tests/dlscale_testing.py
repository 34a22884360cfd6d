"""Where the repository, its environments and the offline dataset are (shared by the tests)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINER_PYTHON = Path(os.environ.get("DLSCALE_TRAINER_PYTHON", REPO / ".venv" / "trainer" / "bin" / "python"))
DRIVER_BIN = Path(os.environ.get("DLSCALE_DRIVER_BIN", REPO / ".venv" / "driver" / "bin"))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
