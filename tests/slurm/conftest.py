"""Fixtures for the tests that need the local Slurm started by tests/slurm/slurm-up.sh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slurm_helpers import run, skip_or_fail  # noqa: E402


@pytest.fixture(scope="session")
def cluster() -> str:
    """The node name, once `sinfo` has reached the controller."""
    if shutil.which("sinfo") is None:
        skip_or_fail("no Slurm client (sinfo) on PATH: run tests/slurm/slurm-up.sh")
    try:
        res = run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=20)
    except subprocess.TimeoutExpired:
        skip_or_fail("sinfo timed out: no Slurm controller reachable")
    if res.returncode != 0 or not res.stdout.strip():
        skip_or_fail(
            "sinfo cannot reach a Slurm controller (run tests/slurm/slurm-up.sh): "
            + (res.stderr.strip() or res.stdout.strip())
        )
    node, state = res.stdout.split()[:2]
    if state.rstrip("*~#$@+").startswith(("down", "drain", "fail")):
        skip_or_fail(f"Slurm node {node} is {state}")
    return node


@pytest.fixture(scope="session")
def multi_cluster() -> list[str]:
    """The node names of the multi-node cluster (tests/slurm/multinode-up.sh), once `sinfo`
    with its SLURM_CONF lists them all and none is down, drained or failed."""
    from slurm_helpers import MULTI_CONF, multi_env

    if shutil.which("sinfo") is None:
        skip_or_fail("no Slurm client (sinfo) on PATH: run tests/slurm/multinode-up.sh")
    if not MULTI_CONF.is_file():
        skip_or_fail(f"no multi-node cluster config {MULTI_CONF}: run tests/slurm/multinode-up.sh")
    try:
        res = run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=20, env=multi_env())
    except subprocess.TimeoutExpired:
        skip_or_fail("sinfo timed out: the multi-node cluster's slurmctld is not reachable")
    if res.returncode != 0 or not res.stdout.strip():
        skip_or_fail(
            "sinfo cannot reach the multi-node cluster (run tests/slurm/multinode-up.sh): "
            + (res.stderr.strip() or res.stdout.strip())
        )
    nodes = []
    for line in res.stdout.splitlines():
        node, state = line.split()[:2]
        if state.rstrip("*~#$@+").startswith(("down", "drain", "fail")):
            skip_or_fail(f"multi-node cluster: node {node} is {state}")
        nodes.append(node)
    return sorted(nodes, key=lambda n: int(n.rsplit("n", 1)[1]) if n.rsplit("n", 1)[1].isdigit() else 0)
