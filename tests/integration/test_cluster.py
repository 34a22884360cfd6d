"""The transient Spark standalone cluster, for real: pyspark's own daemons on loopback."""

from __future__ import annotations

import os
import stat
from urllib.parse import urlparse

import pytest

from dlscale.cluster import SparkInstall, StandaloneCluster, tagged_pids

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def install(trainer_python):
    return SparkInstall.discover(trainer_python)


def cmdlines():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    yield handle.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue


def listening_ports():
    """TCP ports with a socket in LISTEN state (TIME_WAIT leftovers of closed connections do not
    keep a port from being reused by a server, which binds with SO_REUSEADDR)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in list(handle)[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_cluster_starts_confined_authenticated_and_stops_clean(install, tmp_path):
    scratch = tmp_path / "scratch"
    cluster = StandaloneCluster(install, str(scratch), cores_per_worker=2, worker_memory="1g")
    with cluster:
        status = cluster.master_status()
        workers = [w for w in status["workers"] if w["state"] == "ALIVE"]
        assert len(workers) == 1 and workers[0]["cores"] == 2
        assert status["url"] == cluster.master_url
        # the web UI and the master listen on loopback only
        assert urlparse(cluster.web_url).hostname == "127.0.0.1"
        assert cluster.master_url.startswith("spark://127.0.0.1:")
        daemons = tagged_pids(cluster.tag)
        assert len(daemons) >= 2
        # the secret is in a private file, never on a command line
        props = cluster.driver_properties({})
        assert stat.S_IMODE(os.stat(props).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(scratch / "conf").st_mode) == 0o700
        assert cluster.secret in open(props).read()
        assert not any(cluster.secret in line for line in cmdlines())
        master_port = int(cluster.master_url.rsplit(":", 1)[1])
        web_port = urlparse(cluster.web_url).port
        seen_listening = listening_ports()
    assert tagged_pids(cluster.tag) == []
    assert master_port in seen_listening and web_port in seen_listening  # the check can fail
    assert not {master_port, web_port} & listening_ports()


def test_two_clusters_side_by_side_do_not_collide(install, tmp_path):
    first = StandaloneCluster(install, str(tmp_path / "a"), cores_per_worker=1, worker_memory="1g")
    second = StandaloneCluster(install, str(tmp_path / "b"), cores_per_worker=1, worker_memory="1g")
    with first, second:
        assert first.master_url != second.master_url
        assert first.secret != second.secret
        for cluster in (first, second):
            assert StandaloneCluster.alive_workers(cluster.master_status()) == 1
    assert tagged_pids(first.tag) == [] and tagged_pids(second.tag) == []
