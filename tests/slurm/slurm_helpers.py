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


def sacct_rows(args: list[str], fields: str, want: int, timeout: float = 60, env: dict | None = None) -> list[dict]:
    """Poll sacct until `want` rows are in a final state (bounded); ``env``: e.g. multi_env()."""
    deadline = time.monotonic() + timeout
    names = fields.split(",")
    rows: list[dict] = []
    while time.monotonic() < deadline:
        res = run(["sacct", "-X", "-P", "-n", f"--format={fields}", *args], env=env)
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


# --- The multi-node cluster of tests/slurm/multinode-up.sh (cluster dlscale-multi) ---------------
MULTI_STATE = Path(os.environ.get("DLSCALE_MULTI_DIR", "/var/tmp/dlscale-slurm-multi"))
MULTI_CONF = MULTI_STATE / "etc" / "slurm.conf"
MULTI_BRIDGE_ADDR = "198.18.0.1"


def multi_env(**extra: str) -> dict:
    """A login-node environment (no SLURM_* job variables) whose Slurm commands talk to the
    multi-node cluster: SLURM_CONF is its config. Jobs submitted with it inherit SLURM_CONF, so
    `srun` inside them reaches the same cluster."""
    return login_node_env(SLURM_CONF=str(MULTI_CONF), **extra)


def multi_node_names(count: int) -> list[str]:
    """dlscale-n1 .. dlscale-n<count>, the names multinode-up.sh gives the nodes."""
    return [f"dlscale-n{i}" for i in range(1, count + 1)]


def node_address(node: str) -> str:
    """The node's IPv4 address (198.18.0.(10+i) for dlscale-n<i>)."""
    return f"198.18.0.{10 + int(node.rsplit('n', 1)[1])}"


def node_tmpdir(node: str) -> Path:
    """The node-local scratch its TaskProlog exports to every task as SLURM_TMPDIR."""
    return MULTI_STATE / "nodes" / node / "tmp"


def node_netns(node: str) -> int:
    """Inode of the node's network namespace (/run/netns/<node>); FileNotFoundError if none."""
    return os.stat(f"/run/netns/{node}").st_ino


def processes_on_node(node: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process in the node's network namespace, sorted by pid:
    its slurmd, job steps and whatever they started (JVMs...). Processes that exit meanwhile,
    zombies and those whose namespace cannot be read are left out."""
    ino = node_netns(node)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino != ino:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmdline:  # zombies and kernel threads have none
            found.append((int(entry.name), cmdline))
    return sorted(found)
