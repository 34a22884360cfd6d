"""The transient Spark standalone cluster, for real: pyspark's own daemons on loopback."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from urllib.parse import urlparse

import pytest

from dlscale.cluster import StandaloneCluster
from dlscale.cpu_claims import claimed_cpus
from dlscale.spark_node import SparkInstall, tagged_pids
from test_security import APP, REFUSED, Client, app_names, as_conf_options, client_files_in, outsider_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def install(trainer_python):
    return SparkInstall.discover(trainer_python)


def cmdlines_by_pid() -> dict[int, str]:
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    found[int(pid)] = handle.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return found


def cmdlines():
    return cmdlines_by_pid().values()


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


def cpus_allowed(pid: int) -> dict[int, list[int]]:
    """thread id -> the CPUs it may run on (Cpus_allowed_list of /proc/PID/task/TID/status)."""
    found = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # the process ended meanwhile
        return found
    for tid in tids:
        try:
            status = open(f"/proc/{pid}/task/{tid}/status").read()
        except OSError:  # the thread ended meanwhile
            continue
        listed = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M).group(1)
        cpus = []
        for part in listed.split(","):
            low, _, high = part.partition("-")
            cpus.extend(range(int(low), int(high or low) + 1))
        found[int(tid)] = cpus
    return found


def test_cluster_starts_confined_authenticated_and_stops_clean(install, tmp_path, monkeypatch):
    monkeypatch.setenv("DLSCALE_CPU_LOCK_DIR", str(tmp_path / "locks"))  # private: other cells do not block us
    usable = sorted(os.sched_getaffinity(0))
    assert len(usable) >= 2, f"needs 2 usable CPUs to tell a confined process from an unconfined one: {usable}"
    scratch = tmp_path / "scratch"
    # Like a cell: claim one CPU, confine this process to it, then start the daemons.
    with claimed_cpus(1) as cpus:
        assert sorted(os.sched_getaffinity(0)) == cpus != usable  # the confinement is visible
        cluster = StandaloneCluster(install, str(scratch), cores_per_worker=1, worker_memory="1g")
        with cluster:
            status = cluster.master_status()
            workers = [w for w in status["workers"] if w["state"] == "ALIVE"]
            assert len(workers) == 1 and workers[0]["cores"] == 1
            assert status["url"] == cluster.master_url
            # the web UI and the master listen on loopback only
            assert urlparse(cluster.web_url).hostname == "127.0.0.1"
            assert cluster.master_url.startswith("spark://127.0.0.1:")
            # the secret is in a private file, never on a command line
            props = cluster.driver_properties({})
            assert stat.S_IMODE(os.stat(props).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(scratch / "conf").st_mode) == 0o700
            assert cluster.secret in open(props).read()
            assert not any(cluster.secret in line for line in cmdlines())

            # authenticated: a client without the secret is refused, the same client with it runs
            submit, env = client_command(cluster, tmp_path)
            refused = Client(submit + ["no-secret", str(tmp_path / "never")], env, tmp_path / "refused.log")
            try:
                refused_text = refused.wait_for(REFUSED)
            finally:
                refused.stop()
            assert any(needle in refused_text for needle in REFUSED), refused_text[-3000:]
            assert "RESULT" not in refused_text
            assert "no-secret" not in app_names(cluster.master_status()), cluster.master_status()
            release = tmp_path / "release"
            accepted = Client(submit[:-1] + ["--properties-file", secret_properties(cluster, tmp_path), submit[-1],
                                             "with-secret", str(release)], env, tmp_path / "accepted.log")
            try:
                accepted_text = accepted.wait_for(["RESULT"])
                assert "RESULT 14" in accepted_text, accepted_text[-3000:]
                # confined: every thread of every process of the cluster (master, worker, and the
                # executor it started for the running application) may use the claimed CPU only
                lines = cmdlines_by_pid()
                allowed = {pid: cpus_allowed(pid) for pid in tagged_pids(cluster.tag) if pid in lines}
                allowed = {pid: threads for pid, threads in allowed.items() if threads}  # still running
                seen = " ".join(lines[pid] for pid in allowed)
                assert "deploy.master.Master" in seen and "deploy.worker.Worker" in seen, seen
                assert "CoarseGrainedExecutorBackend" in seen, seen
                wrong = {pid: {tid: c for tid, c in threads.items() if c != cpus} for pid, threads in allowed.items()}
                assert not any(wrong.values()), f"threads of the cluster outside CPUs {cpus}: {wrong}"
                release.touch()
                assert accepted.proc.wait(timeout=120) == 0, accepted.text()[-3000:]
            finally:
                accepted.stop()
            master_port = int(cluster.master_url.rsplit(":", 1)[1])
            web_port = urlparse(cluster.web_url).port
            seen_listening = listening_ports()
    # positive control: this process, released, may use every CPU again
    assert sorted(os.sched_getaffinity(0)) == usable
    assert tagged_pids(cluster.tag) == []
    assert master_port in seen_listening and web_port in seen_listening  # the check can fail
    assert not {master_port, web_port} & listening_ports()


def client_command(cluster: StandaloneCluster, tmp_path: Path) -> tuple[list[str], dict]:
    """spark-submit of a small application (its arguments follow), in an environment with neither
    the cluster's secret nor its tag."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    submit = [os.path.join(cluster.install.spark_home, "bin", "spark-submit"), "--master", cluster.master_url,
              "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1",
              "--conf", "spark.driver.bindAddress=127.0.0.1", "--conf", "spark.cores.max=1",
              "--conf", "spark.executor.memory=512m", "--driver-memory", "512m",
              *as_conf_options(client_files_in(tmp_path)), str(app)]
    return submit, outsider_env(cluster)


def secret_properties(cluster: StandaloneCluster, tmp_path: Path) -> str:
    """A 0600 properties file with the cluster's secret (never on a command line)."""
    path = tmp_path / "with-secret.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"spark.authenticate true\nspark.authenticate.secret {cluster.secret}\n")
    return str(path)


def test_two_clusters_side_by_side_do_not_collide(install, tmp_path):
    first = StandaloneCluster(install, str(tmp_path / "a"), cores_per_worker=1, worker_memory="1g")
    second = StandaloneCluster(install, str(tmp_path / "b"), cores_per_worker=1, worker_memory="1g")
    with first, second:
        assert first.master_url != second.master_url
        assert first.secret != second.secret
        for cluster in (first, second):
            assert StandaloneCluster.alive_workers(cluster.master_status()) == 1
    assert tagged_pids(first.tag) == [] and tagged_pids(second.tag) == []
