"""An in-driver cluster (a single-node cell's default: Spark's local-cluster master, the
standalone Master and Worker inside the driver JVM) is as closed as the daemons
(test_security.py), against a real one: its master, found by its web UI's /json among the
driver JVM's listening sockets, refuses clients and workers without the secret; every socket of
the driver JVM listens on 127.0.0.1; its web UI does not kill applications. Positive control:
with spark.ui.killEnabled=true in the driver's conf, the same request kills the application.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dlscale.cluster import StandaloneCluster
from dlscale.scratch import private_scratch
from dlscale.spark_node import SparkInstall, tagged_pids
import test_security as security
from test_security import (APP, LOOPBACK, Client, cmdlines, kill_from_the_web_ui, listening, pids_running,
                           session_pids, start_owner_app)

pytestmark = pytest.mark.integration
KILLED = "Master removed our application: KILLED"


@pytest.fixture
def app(tmp_path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


class KillableInDriver(StandaloneCluster):
    """A careless owner's: the driver's conf (which its master reads) lets the web UI kill."""

    def driver_properties(self, extra):
        return super().driver_properties({**extra, "spark.ui.killEnabled": "true"})


def in_driver_cluster(kind, trainer_python, tmp_path, monkeypatch):
    monkeypatch.setenv("DLSCALE_SCRATCH", str(tmp_path))
    with private_scratch() as scratch:
        cluster = kind(SparkInstall.discover(trainer_python), scratch, cores_per_worker=1, worker_memory="1g",
                       in_driver=True)
        with cluster:
            yield cluster
        assert tagged_pids(cluster.tag) == []


@pytest.fixture
def in_driver(trainer_python, tmp_path, monkeypatch):
    yield from in_driver_cluster(StandaloneCluster, trainer_python, tmp_path, monkeypatch)


@pytest.fixture
def killable(trainer_python, tmp_path, monkeypatch):
    yield from in_driver_cluster(KillableInDriver, trainer_python, tmp_path, monkeypatch)


def json_of(url: str):
    try:
        with urllib.request.urlopen(url + "/json", timeout=5) as response:
            return json.load(response)
    except (OSError, ValueError, http.client.HTTPException):  # not an HTTP port (e.g. py4j's)
        return None


def driver_jvm(owner: Client) -> int:
    pids, lines = session_pids(owner.proc.pid), cmdlines()
    drivers = pids_running("org.apache.spark.deploy.SparkSubmit", pids, lines)
    assert len(drivers) == 1, {pid: lines.get(pid) for pid in pids}
    return drivers[0]


def in_driver_master(owner: Client) -> tuple[str, dict, dict]:
    """(web UI URL, its /json, the driver JVM's listening sockets): the master's web UI is the one
    of the driver JVM's ports whose /json lists applications."""
    sockets = listening([driver_jvm(owner)])
    for _, port in sockets.values():
        url = "http://127.0.0.1:%d" % port
        status = json_of(url)
        if isinstance(status, dict) and "activeapps" in status:
            return url, status, sockets
    raise AssertionError(f"no master web UI among the driver JVM's sockets {sockets}")


def start(cluster: StandaloneCluster, app: Path, name: str, tmp_path: Path):
    owner, release = start_owner_app(cluster, app, name, tmp_path)
    text = owner.wait_for(["RESULT"])
    assert "RESULT 14" in text, text[-4000:]
    return owner, release


def test_an_in_driver_master_is_closed_to_outsiders_and_cannot_kill(in_driver, app, tmp_path):
    owner, release = start(in_driver, app, "owner-app", tmp_path)
    try:
        web_url, status, sockets = in_driver_master(owner)
        # the master, the worker (and their web UIs), the driver and its block manager: one JVM
        assert len(sockets) >= 6 and {address for address, _ in sockets.values()} <= LOOPBACK, sockets
        [running] = [a for a in status["activeapps"] if a["name"] == "owner-app"]
        assert running["state"] == "RUNNING" and status["url"].startswith("spark://127.0.0.1:"), status
        assert len(status["workers"]) == 1 and status["workers"][0]["state"] == "ALIVE", status["workers"]

        # clients and a worker without the secret, against this master (as test_security.py)
        in_driver.master_url, in_driver.web_url = status["url"], web_url
        security.test_clients_and_workers_without_the_secret_are_refused(in_driver, app, tmp_path)

        # its web UI cannot kill the application (the positive control below: it can)
        code, _ = kill_from_the_web_ui(in_driver, running["id"])
        assert code == 200, code
        after = json_of(web_url)
        assert [a["state"] for a in after["activeapps"] if a["id"] == running["id"]] == ["RUNNING"], after
        release.touch()
        assert owner.proc.wait(timeout=120) == 0, owner.text()[-3000:]
        assert KILLED not in owner.text()
    finally:
        owner.stop()


def test_positive_control_kill_enabled_kills_through_the_in_driver_web_ui(killable, app, tmp_path):
    owner, release = start(killable, app, "victim-app", tmp_path)
    try:
        web_url, status, _ = in_driver_master(owner)
        killable.web_url = web_url
        app_id = next(a["id"] for a in status["activeapps"] if a["name"] == "victim-app")
        try:
            code, _ = kill_from_the_web_ui(killable, app_id)
            assert code == 200, code
        except OSError:  # a reset or closed connection (urllib may wrap it in a URLError)
            pass  # the killed application's context stops its in-driver master, at once
        assert KILLED in owner.wait_for([KILLED], timeout=60), owner.text()[-3000:]
    finally:
        release.touch()
        owner.stop()
