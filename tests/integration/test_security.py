"""Authentication and exposure of a transient cluster, against a real running one.

A shared node is a hostile place: other users can reach anything on loopback and read every
command line (`ps`). The cluster runs with `spark.authenticate` and a fresh secret kept in a
0600 file (driver) and the daemons' environment, never on a command line; so:

- a client without the secret, or with a wrong one, is refused (SASL) and the master never
  registers its application; a worker without the secret never joins the cluster;
- a client with the secret runs (the check above can fail), and while it runs the secret is on
  no command line and in no file of the scratch but the 0600 properties file;
- every socket of the cluster and of the application listens on 127.0.0.1 only; the driver's
  web UI is off; the master's web UI (needed for /json) does not let anyone kill applications.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dlscale.cell import private_scratch
from dlscale.cluster import SparkInstall, StandaloneCluster, tagged_pids

pytestmark = pytest.mark.integration

LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1 in /proc/net/tcp{,6}
REFUSED = ("Expected SaslMessage", "SaslException", "Mismatched response")

APP = """
import os, sys, time
from pyspark import SparkConf, SparkContext
sc = SparkContext(conf=SparkConf().setAppName(sys.argv[1]))
print("UI", sc._jsc.sc().uiWebUrl().isDefined(), flush=True)  # the driver web UI
print("RESULT", sc.parallelize(range(4), 1).map(lambda x: x * x).sum(), flush=True)
release, deadline = sys.argv[2], time.time() + 180
while not os.path.exists(release) and time.time() < deadline:
    time.sleep(0.2)
sc.stop()
"""


@pytest.fixture(scope="module")
def cluster(trainer_python, tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    os.environ["DLSCALE_SCRATCH"] = str(base)
    try:
        with private_scratch() as scratch:
            running = StandaloneCluster(SparkInstall.discover(trainer_python), scratch, cores_per_worker=1,
                                        worker_memory="1g")
            with running:
                yield running
            assert tagged_pids(running.tag) == []
    finally:
        os.environ.pop("DLSCALE_SCRATCH", None)


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("app") / "app.py"
    path.write_text(APP)
    return path


class Client:
    """A process of ours (own session, so it is stopped with all its children)."""

    def __init__(self, command: list[str], env: dict, log: Path):
        self.log = log
        self.proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needles, timeout: float = 180) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.text()
            if any(needle in text for needle in needles):
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        return self.text()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def outsider_env(cluster: StandaloneCluster) -> dict:
    """Java and Spark, but neither the cluster's secret nor its tag."""
    env = {k: v for k, v in os.environ.items() if k not in ("_SPARK_AUTH_SECRET", "DLSCALE_CLUSTER_TAG")}
    env.update(JAVA_HOME=cluster.install.java_home, SPARK_HOME=cluster.install.spark_home,
               PYSPARK_PYTHON=cluster.install.python, PYSPARK_DRIVER_PYTHON=cluster.install.python,
               SPARK_LOCAL_IP="127.0.0.1")
    return env


def app_names(status: dict) -> set[str]:
    return {app["name"] for key in ("activeapps", "completedapps") for app in status.get(key, [])}


def listening(pids) -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of the LISTEN sockets held by ``pids``."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as handle:
            for line in list(handle)[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    address, port = fields[1].rsplit(":", 1)
                    table[int(fields[9])] = (address, int(port, 16))
    held = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and int(target[8:-1]) in table:
                    held[int(target[8:-1])] = table[int(target[8:-1])]
        except OSError:
            continue
    return held


def cmdlines() -> dict[int, str]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    found[int(entry)] = handle.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return found


def test_clients_and_workers_without_the_secret_are_refused(cluster, app, tmp_path):
    spark = cluster.install.spark_home
    submit = [os.path.join(spark, "bin", "spark-submit"), "--master", cluster.master_url,
              "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1",
              "--conf", "spark.driver.bindAddress=127.0.0.1"]
    release = str(tmp_path / "never")
    env = outsider_env(cluster)
    intruders = {
        "no-auth": Client(submit + [str(app), "intruder-no-auth", release], env, tmp_path / "no-auth.log"),
        "wrong-secret": Client(submit + ["--conf", "spark.authenticate=true",
                                         "--conf", "spark.authenticate.secret=not-the-secret",
                                         str(app), "intruder-wrong-secret", release], env, tmp_path / "wrong.log"),
        "worker": Client([os.path.join(spark, "bin", "spark-class"), "org.apache.spark.deploy.worker.Worker",
                          "--cores", "1", "--memory", "512m", "--webui-port", "0", cluster.master_url],
                         env, tmp_path / "worker.log"),
    }
    try:
        texts = {name: client.wait_for(REFUSED) for name, client in intruders.items()}
        status = cluster.master_status()
    finally:
        for client in intruders.values():
            client.stop()
    for name, text in texts.items():
        assert any(needle in text for needle in REFUSED), f"{name} was not refused:\n{text[-3000:]}"
        assert "RESULT" not in text, f"{name} ran a job"
    assert not app_names(status) & {"intruder-no-auth", "intruder-wrong-secret"}, status
    assert StandaloneCluster.alive_workers(status) == 1 and len(status["workers"]) == 1, status["workers"]


def test_client_with_the_secret_runs_and_nothing_exposes_the_cluster(cluster, app, tmp_path):
    release = tmp_path / "release"
    extra = {"spark.cores.max": "1", "spark.executor.memory": "512m", "spark.driver.memory": "512m"}
    command = cluster.submit_command(str(app), ["owner-app", str(release)], extra)
    owner = Client(command, cluster.daemon_env(), tmp_path / "owner.log")
    try:
        text = owner.wait_for(["RESULT"])
        assert "RESULT 14" in text, text[-4000:]
        status = cluster.master_status()
        running = [a for a in status["activeapps"] if a["name"] == "owner-app"]
        assert running and running[0]["state"] == "RUNNING", status["activeapps"]
        processes = tagged_pids(cluster.tag)
        lines = cmdlines()
        executors = [pid for pid in processes if "CoarseGrainedExecutorBackend" in lines.get(pid, "")]
        assert executors, "no executor of the application is running"

        # the secret: in the 0600 properties file of a 0700 scratch, on no command line, in no
        # other file (daemon logs, the executor's launch command in the work dir)
        secret_file = Path(cluster.secret_file)
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        for folder in (Path(cluster.scratch), Path(cluster.conf_dir)):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        assert cluster.secret in secret_file.read_text()
        assert [pid for pid, line in lines.items() if cluster.secret in line] == []
        leaked = [str(p) for p in Path(cluster.scratch).rglob("*")
                  if p.is_file() and p != secret_file and cluster.secret.encode() in p.read_bytes()]
        assert leaked == []
        assert any(Path(cluster.scratch, "work").rglob("stderr")), "no executor log: the file scan proved nothing"

        # every listening socket of the cluster and the application on loopback; driver UI off
        sockets = listening(processes)
        ports = {port for _, port in sockets.values()}
        assert {address for address, _ in sockets.values()} <= LOOPBACK, sockets
        web_port = urllib.parse.urlparse(cluster.web_url).port
        master_port = int(cluster.master_url.rsplit(":", 1)[1])
        assert {web_port, master_port} <= ports and len(ports) >= 6, sockets
        assert "UI False" in text  # no driver web UI

        # the master's web UI: reachable on loopback (for /json), but cannot kill the application
        app_id = running[0]["id"]
        request = urllib.request.Request(cluster.web_url + "/app/kill/", method="POST",
                                         data=urllib.parse.urlencode({"id": app_id, "terminate": "true"}).encode())
        try:  # with spark.ui.killEnabled (Spark's default) this kills the application
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError:
            pass
        time.sleep(3)
        status = cluster.master_status()
        assert [a["state"] for a in status["activeapps"] if a["id"] == app_id] == ["RUNNING"], status
        assert not [a for a in status["completedapps"] if a["id"] == app_id], status

        release.touch()
        assert owner.proc.wait(timeout=120) == 0, owner.text()[-3000:]
    finally:
        owner.stop()
