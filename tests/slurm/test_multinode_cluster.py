"""Checks against the multi-node cluster started by tests/slurm/multinode-up.sh.

Cluster dlscale-multi: nodes dlscale-n1..nN on this one machine, each slurmd in a network
namespace (address 198.18.0.(10+i) behind the bridge 198.18.0.1) and a UTS namespace
(hostname = node name) of its own, pinned to one CPU; a TaskProlog exports the node's own
scratch as SLURM_TMPDIR. Every Slurm command here runs with SLURM_CONF of that cluster
(`multi_env()`). Without the cluster the tests skip, or fail under DLSCALE_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

from slurm_helpers import (  # noqa: E402
    MULTI_BRIDGE_ADDR,
    multi_env,
    multi_node_names,
    node_address,
    node_netns,
    node_tmpdir,
    processes_on_node,
    run,
    skip_or_fail,
)

# What a task reports about the node it runs on, as one JSON line. PROBE_LOOPBACK_PORT is a
# port the test listens on on the host's loopback, PROBE_BRIDGE_PORT one on the bridge address.
PROBE = r"""
import json, os, socket, subprocess
def connect(addr, port):
    try:
        socket.create_connection((addr, int(port)), timeout=5).close()
        return "connected"
    except OSError as error:
        return type(error).__name__
host = socket.gethostname()
ip = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
print(json.dumps({
    "role": os.environ.get("PROBE_ROLE", "task"),
    "host": host,
    "addr": socket.gethostbyname(host),
    "cpus": sorted(os.sched_getaffinity(0)),
    "tmpdir": os.environ.get("SLURM_TMPDIR"),
    "netns": os.stat("/proc/self/ns/net").st_ino,
    "ipv4": sorted(line.split()[3].split("/")[0] for line in ip.splitlines()),
    "loopback": connect("127.0.0.1", os.environ["PROBE_LOOPBACK_PORT"]),
    "bridge": connect(os.environ["PROBE_BRIDGE_ADDR"], os.environ["PROBE_BRIDGE_PORT"]),
}), flush=True)
"""


def listener(addr: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((addr, 0))
    sock.listen(16)
    return sock


@pytest.fixture
def probe_env():
    """multi_env() plus two listening ports on the host: one on loopback, one on the bridge.
    The test process can connect to both (positive control)."""
    lo, br = listener("127.0.0.1"), listener(MULTI_BRIDGE_ADDR)
    try:
        for sock in (lo, br):
            socket.create_connection(sock.getsockname(), timeout=5).close()
        yield multi_env(
            PROBE_LOOPBACK_PORT=str(lo.getsockname()[1]),
            PROBE_BRIDGE_ADDR=MULTI_BRIDGE_ADDR,
            PROBE_BRIDGE_PORT=str(br.getsockname()[1]),
        )
    finally:
        lo.close()
        br.close()


def reports(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_sinfo_shows_the_nodes_idle(multi_cluster):
    want = int(os.environ.get("DLSCALE_MULTI_NODES", "2"))
    assert multi_cluster == multi_node_names(want)
    # Other tests may be using the nodes: wait (bounded) until they are idle.
    deadline = time.monotonic() + 180
    while True:
        out = run(["sinfo", "-h", "-N", "-p", "multi", "-o", "%N %T %c"], env=multi_env()).stdout
        rows = sorted(line.split() for line in out.splitlines())
        if all(state == "idle" for _, state, _ in rows) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert rows == sorted([node, "idle", "1"] for node in multi_node_names(want)), out


def test_srun_two_nodes_are_separate_hosts(multi_cluster, probe_env):
    if len(multi_cluster) < 2:
        skip_or_fail("needs DLSCALE_MULTI_NODES >= 2 (make test starts 2 nodes)")
    # The first two nodes: on different CPUs (node i is pinned to CPU (i-1) mod nproc).
    res = run(["srun", "-N2", "--ntasks-per-node=1", f"--nodelist={','.join(multi_cluster[:2])}", "-t", "2",
               sys.executable, "-c", PROBE],
              timeout=300, env=probe_env)
    assert res.returncode == 0, res.stderr
    tasks = reports(res.stdout)
    assert len(tasks) == 2, res.stdout + res.stderr
    a, b = sorted(tasks, key=lambda t: t["host"])
    host_netns = os.stat("/proc/self/ns/net").st_ino

    # Two hosts, each with its own name, address (not loopback) and network namespace.
    assert a["host"] != b["host"] and {a["host"], b["host"]} <= set(multi_cluster), (a, b)
    for t in (a, b):
        assert t["addr"] == node_address(t["host"]) and t["addr"].startswith("198.18.0."), t
        assert t["netns"] == node_netns(t["host"]) != host_netns, t
        # Its own address is on one of its interfaces, the other node's is not.
        other = b if t is a else a
        assert t["ipv4"] == ["127.0.0.1", t["addr"]], t
        assert other["addr"] not in t["ipv4"], t
        # Negative control: the host's loopback (where the test listens) is not the node's ...
        assert t["loopback"] == "ConnectionRefusedError", t
        # ... positive control: the host is reachable through the bridge.
        assert t["bridge"] == "connected", t
        # Node-local scratch from the TaskProlog.
        assert t["tmpdir"] == str(node_tmpdir(t["host"])) and Path(t["tmpdir"]).is_dir(), t
    assert a["netns"] != b["netns"]
    assert a["tmpdir"] != b["tmpdir"]
    # One CPU each, and different ones (where the machine has two).
    assert len(a["cpus"]) == 1 and len(b["cpus"]) == 1, (a, b)
    if (os.cpu_count() or 1) >= 2:
        assert set(a["cpus"]).isdisjoint(b["cpus"]), (a, b)


def test_processes_on_node_sees_a_step_on_its_node_only(multi_cluster):
    if len(multi_cluster) < 2:
        skip_or_fail("needs DLSCALE_MULTI_NODES >= 2 (make test starts 2 nodes)")
    first, node = multi_cluster[0], multi_cluster[1]
    marker = f"dlscale-mn-{uuid.uuid4().hex[:12]}"
    env = multi_env()
    code = "import sys, time; time.sleep(120)"
    proc = subprocess.Popen(["srun", "-N1", "-n1", "-w", node, "-J", marker, "-t", "3",
                             sys.executable, "-c", code, marker],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            ours = [p for p in processes_on_node(node) if marker in p[1]]
            if ours:
                break
            time.sleep(0.5)
        assert ours, f"step never seen in {node}'s namespace: {proc.poll()} {processes_on_node(node)}"
        assert [p for p in processes_on_node(first) if marker in p[1]] == []
        slurmds = [cmd for _, cmd in processes_on_node(node) if cmd.startswith("slurmd ")]
        assert slurmds == [f"slurmd -N {node} -f {env['SLURM_CONF']}"], slurmds
        # The same process seen from /proc: in the node's namespace, not the host's.
        pid = ours[0][0]
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == node_netns(node) != os.stat("/proc/self/ns/net").st_ino
    finally:
        run(["scancel", "--name", marker], env=env)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    deadline = time.monotonic() + 60
    while [p for p in processes_on_node(node) if marker in p[1]] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [p for p in processes_on_node(node) if marker in p[1]] == [], "step left running after scancel"


def test_sbatch_step_on_the_other_node(multi_cluster, probe_env, tmp_path):
    if len(multi_cluster) < 2:
        skip_or_fail("needs DLSCALE_MULTI_NODES >= 2 (make test starts 2 nodes)")
    first, second = multi_cluster[:2]
    probe = f"{shlex.quote(sys.executable)} -c {shlex.quote(PROBE)}"
    script = tmp_path / "job.sbatch"
    script.write_text(
        "#!/bin/sh\n"
        f"PROBE_ROLE=batch {probe}\n"
        f"PROBE_ROLE=step srun --nodes=1 --ntasks=1 --nodelist={second} {probe}\n"
    )
    out = tmp_path / "job.out"
    res = run(["sbatch", "--wait", "--parsable", "-N2", f"--nodelist={first},{second}", "-t", "2",
               "-o", str(out), str(script)], timeout=300, env=probe_env)
    assert res.returncode == 0, f"{res.stderr}\n{out.read_text() if out.exists() else ''}"
    jobid = res.stdout.strip().split(";")[0]
    by_role = {t["role"]: t for t in reports(out.read_text())}
    assert set(by_role) == {"batch", "step"}, out.read_text()
    batch, step = by_role["batch"], by_role["step"]
    assert batch["host"] == first and step["host"] == second, (batch, step)
    assert batch["netns"] == node_netns(first) and step["netns"] == node_netns(second)
    # The TaskProlog runs for the batch step too: each has its own node's scratch.
    assert batch["tmpdir"] == str(node_tmpdir(first)), batch
    assert step["tmpdir"] == str(node_tmpdir(second)), step
    # Accounting (the shared slurmdbd) has the batch step on the first node, step 0 on the second.
    deadline = time.monotonic() + 60
    while True:
        acct = run(["sacct", "-j", jobid, "-n", "-P", "-o", "JobID,State,NodeList"], env=multi_env()).stdout
        rows = {r[0]: r[1:] for r in (line.split("|") for line in acct.splitlines()) if r[0]}
        if rows.get(f"{jobid}.0", [""])[0] == "COMPLETED" and rows.get(f"{jobid}.batch", [""])[0] == "COMPLETED":
            break
        if time.monotonic() > deadline:  # a timeout, not a speed check
            pytest.fail(f"sacct did not report the job's steps finished within 60 s: {acct}")
        time.sleep(1)
    assert rows[f"{jobid}.batch"] == ["COMPLETED", first], rows
    assert rows[f"{jobid}.0"] == ["COMPLETED", second], rows
