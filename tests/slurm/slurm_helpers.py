"""Helpers shared by the tests that need the local Slurm of tests/slurm/slurm-up.sh."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = os.environ.get("DLSCALE_DRIVER_SNAKEMAKE", str(REPO / ".venv" / "driver" / "bin" / "snakemake"))
REQUIRE = os.environ.get("DLSCALE_REQUIRE_SLURM") == "1"
# Prints the CPUs this process may run on, as a Python list.
AFFINITY = f'{shlex.quote(sys.executable)} -c "import os; print(sorted(os.sched_getaffinity(0)))"'


def skip_or_fail(reason: str) -> None:
    """Skip where Slurm is absent, but fail under DLSCALE_REQUIRE_SLURM=1 (CI, `make test`)."""
    if REQUIRE:
        pytest.fail(f"{reason} (DLSCALE_REQUIRE_SLURM=1)", pytrace=False)
    pytest.skip(reason)


def run(cmd: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def wait_node_empty(node: str, timeout: float = 180) -> None:
    """Wait until no job holds CPUs on the node, so ours get CPUs 0 and 1 (the node declares
    more CPUs than exist, and Slurm cannot pin a job to a CPU that does not exist)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(["scontrol", "-o", "show", "node", node]).stdout
        m = re.search(r"\bCPUAlloc=(\d+)", out)
        if m and m.group(1) == "0":
            return
        time.sleep(2)
    skip_or_fail(f"node {node} stayed busy with other jobs for {timeout:.0f}s")


def sacct_rows(args: list[str], fields: str, want: int, timeout: float = 60) -> list[dict]:
    """Poll sacct until `want` rows are in a final state (bounded)."""
    deadline = time.monotonic() + timeout
    names = fields.split(",")
    rows: list[dict] = []
    while time.monotonic() < deadline:
        res = run(["sacct", "-X", "-P", "-n", f"--format={fields}", *args])
        rows = [dict(zip(names, line.split("|"))) for line in res.stdout.splitlines() if line]
        if len(rows) >= want and all(r["State"] not in ("PENDING", "RUNNING", "COMPLETING") for r in rows):
            return rows
        time.sleep(1)
    pytest.fail(f"sacct {' '.join(args)} did not report {want} finished job(s) in {timeout:.0f}s: {rows}")


def login_node_env(**extra: str) -> dict:
    """The environment of a user on a login node: no SLURM_* job variables (SLURM_CONF stays)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env.update(extra)
    return env
