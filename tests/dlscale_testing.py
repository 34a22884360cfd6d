"""Where the repository, its environments and the offline dataset are, and how to read /proc
(shared by the tests)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINER_PYTHON = Path(os.environ.get("DLSCALE_TRAINER_PYTHON", REPO / ".venv" / "trainer" / "bin" / "python"))
DRIVER_BIN = Path(os.environ.get("DLSCALE_DRIVER_BIN", REPO / ".venv" / "driver" / "bin"))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def read_proc(pid: int, name: str) -> bytes:
    """/proc/<pid>/<name> (cmdline, environ, status...), or b"" once the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def command_line(raw: bytes) -> str:
    """A /proc cmdline as one line."""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
