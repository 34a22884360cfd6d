"""Authentication and exposure of a transient cluster, against a real running one.

A shared node is a hostile place: other users can reach anything on loopback and read every
command line (`ps`). The cluster runs with `spark.authenticate` and a fresh secret kept in a
0600 file (driver) and the daemons' environment, never on a command line; so:

- a client without the secret, or with a wrong one, is refused (SASL) and the master never
  registers its application; a worker without the secret never joins the cluster;
- a client with the secret runs (the check above can fail), and while it runs the secret is on
  no command line and in no file of the scratch but the 0600 properties file; the driver (the
  spark-submit JVM and the application's Python) has it in no environment variable: the
  properties file is its only source (the daemons' environment has it: the positive control);
- every socket of the cluster and of the application listens on 127.0.0.1 only; the driver's
  web UI is off; the master's web UI (needed for /json) does not let anyone kill applications,
  and the master runs no REST submission server (it listens on its RPC and web UI ports only).
  Positive control: a master with spark.ui.killEnabled=true and spark.master.rest.enabled=true
  is killed by the same request, and listens on one more port.
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

from dlscale.cluster import StandaloneCluster, free_port
from dlscale.scratch import private_scratch
from dlscale.spark_node import SparkInstall, tagged_pids

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


def client_files_in(folder: Path) -> dict[str, str]:
    """Spark properties that keep a test client's files (Spark's local folders, the JVMs'
    temporary files, e.g. lz4's native library, which a killed JVM leaves) out of /tmp: the
    driver's in ``folder``, an executor's in its working folder in the cluster's scratch."""
    return {"spark.local.dir": str(folder / "spark-local"),
            "spark.driver.extraJavaOptions": f"-Djava.io.tmpdir={folder}",
            "spark.executor.extraJavaOptions": "-Djava.io.tmpdir=."}


def as_conf_options(props: dict[str, str]) -> list[str]:
    return [item for key, value in props.items() for item in ("--conf", f"{key}={value}")]


def test_clients_and_workers_without_the_secret_are_refused(cluster, app, tmp_path):
    spark = cluster.install.spark_home
    submit = [os.path.join(spark, "bin", "spark-submit"), "--master", cluster.master_url,
              "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1",
              "--conf", "spark.driver.bindAddress=127.0.0.1", *as_conf_options(client_files_in(tmp_path))]
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


def session_pids(session: int) -> list[int]:
    """Pids of the processes of session ``session`` (a Client's command and its children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def environ_has(pid: int, needle: str) -> bool:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        return needle.encode() in handle.read()


def environs(pids) -> dict[int, bytes]:
    """pid -> its environment, for those of ``pids`` still running (short-lived helpers end)."""
    found = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                found[pid] = handle.read()
        except OSError:
            continue
    return found


def pids_running(pattern: str, pids, lines: dict[int, str]) -> list[int]:
    return [pid for pid in pids if pattern in lines.get(pid, "")]


def master_pid(cluster: StandaloneCluster) -> int:
    lines = cmdlines()
    masters = pids_running("org.apache.spark.deploy.master.Master", tagged_pids(cluster.tag), lines)
    assert len(masters) == 1, {pid: lines.get(pid) for pid in tagged_pids(cluster.tag)}
    return masters[0]


def cluster_ports(cluster: StandaloneCluster) -> set[int]:
    """The master's RPC and web UI ports."""
    return {int(cluster.master_url.rsplit(":", 1)[1]), urllib.parse.urlparse(cluster.web_url).port}


def kill_from_the_web_ui(cluster: StandaloneCluster, app_id: str) -> tuple[int, str]:
    """POST what the master UI's kill link posts; (final HTTP status, final URL). An error status
    is returned, not swallowed: the caller checks it."""
    request = urllib.request.Request(cluster.web_url + "/app/kill/", method="POST",
                                     data=urllib.parse.urlencode({"id": app_id, "terminate": "true"}).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.url
    except urllib.error.HTTPError as error:
        return error.code, error.url


def app_states(cluster: StandaloneCluster, app_id: str) -> dict[str, list[str]]:
    status = cluster.master_status()
    return {key: [a["state"] for a in status[key] if a["id"] == app_id] for key in ("activeapps", "completedapps")}


def start_owner_app(cluster: StandaloneCluster, app: Path, name: str, tmp_path: Path) -> tuple[Client, Path]:
    """The application of the cluster's owner, the way a cell submits its trainer: the properties
    file holds the secret, the driver's environment does not. It waits for ``release``."""
    release = tmp_path / f"release-{name}"
    extra = {"spark.cores.max": "1", "spark.executor.memory": "512m", "spark.driver.memory": "512m",
             **client_files_in(tmp_path)}
    command = cluster.submit_command(str(app), [name, str(release)], extra)
    return Client(command, cluster.driver_env(), tmp_path / f"{name}.log"), release


def test_client_with_the_secret_runs_and_nothing_exposes_the_cluster(cluster, app, tmp_path):
    owner, release = start_owner_app(cluster, app, "owner-app", tmp_path)
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
        assert cluster_ports(cluster) <= ports and len(ports) >= 6, sockets
        assert "UI False" in text  # no driver web UI

        # the master's web UI: reachable on loopback (for /json), but it cannot kill the
        # application. The same request kills one where spark.ui.killEnabled=true (the positive
        # control below), and there the application is KILLED when the response arrives.
        app_id = running[0]["id"]
        code, _ = kill_from_the_web_ui(cluster, app_id)
        assert code == 200, code
        assert app_states(cluster, app_id) == {"activeapps": ["RUNNING"], "completedapps": []}

        # ... and it goes on to finish normally, after the request: it was never killed
        release.touch()
        assert owner.proc.wait(timeout=120) == 0, owner.text()[-3000:]
        assert app_states(cluster, app_id) == {"activeapps": [], "completedapps": ["FINISHED"]}
    finally:
        owner.stop()


def test_the_driver_gets_the_secret_only_from_its_file(cluster, app, tmp_path):
    """The environment of spark-submit, of the driver JVM it becomes and of the application's
    Python process holds no secret; the daemons' environment does (positive control of the
    /proc reading), and so does the driver's 0600 properties file, its only source."""
    owner, release = start_owner_app(cluster, app, "driver-env-app", tmp_path)
    try:
        text = owner.wait_for(["RESULT"])
        assert "RESULT 14" in text, text[-4000:]  # it authenticated, with the file as only source
        lines = cmdlines()
        driver_side = environs(session_pids(owner.proc.pid))
        drivers = pids_running("org.apache.spark.deploy.SparkSubmit", driver_side, lines)
        python_apps = pids_running(str(app), driver_side, lines)
        assert drivers and python_apps, {pid: lines.get(pid) for pid in driver_side}
        assert [pid for pid, env in driver_side.items() if cluster.secret.encode() in env] == []
        assert [pid for pid, env in driver_side.items() if b"_SPARK_AUTH_SECRET=" in env] == []
        assert environ_has(master_pid(cluster), "_SPARK_AUTH_SECRET=" + cluster.secret)
        assert f"spark.authenticate.secret {cluster.secret}" in Path(cluster.secret_file).read_text()
        release.touch()
        assert owner.proc.wait(timeout=120) == 0, owner.text()[-3000:]
    finally:
        owner.stop()


def test_no_rest_submission_server(cluster):
    """The master listens on exactly its RPC and web UI ports: no REST submission server (Spark's
    default port 6066, or spark.master.rest.port). The positive control below shows that enabling
    it adds a third listening port to the same check."""
    sockets = listening([master_pid(cluster)])
    assert {port for _, port in sockets.values()} == cluster_ports(cluster), sockets


class PermissiveCluster(StandaloneCluster):
    """The cluster of a careless owner: the master's web UI may kill applications and the master
    runs a REST submission server (on a free port). Only the master's options differ."""

    rest_port = 0

    def daemon_env(self):
        env = super().daemon_env()
        env["SPARK_MASTER_OPTS"] += (" -Dspark.ui.killEnabled=true -Dspark.master.rest.enabled=true"
                                     f" -Dspark.master.rest.port={self.rest_port}")
        return env


def test_positive_controls_kill_enabled_and_rest_server(trainer_python, app, tmp_path, monkeypatch):
    """What the checks above would see on a master with spark.ui.killEnabled=true and
    spark.master.rest.enabled=true: the REST port listens too, and the same kill request ends
    the application (KILLED when the response arrives)."""
    monkeypatch.setenv("DLSCALE_SCRATCH", str(tmp_path))
    with private_scratch() as scratch:
        permissive = PermissiveCluster(SparkInstall.discover(trainer_python), scratch, cores_per_worker=1,
                                       worker_memory="1g")
        permissive.rest_port = free_port("127.0.0.1")
        with permissive:
            sockets = listening([master_pid(permissive)])
            assert {port for _, port in sockets.values()} == cluster_ports(permissive) | {permissive.rest_port}, \
                sockets
            victim, _ = start_owner_app(permissive, app, "victim-app", tmp_path)
            try:
                text = victim.wait_for(["RESULT"])
                assert "RESULT 14" in text, text[-4000:]
                app_id = next(a["id"] for a in permissive.master_status()["activeapps"] if a["name"] == "victim-app")
                code, _ = kill_from_the_web_ui(permissive, app_id)
                assert code == 200, code
                assert app_states(permissive, app_id) == {"activeapps": [], "completedapps": ["KILLED"]}
            finally:
                victim.stop()
        assert tagged_pids(permissive.tag) == []
