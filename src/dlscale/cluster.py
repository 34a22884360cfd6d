"""A transient Spark standalone cluster for one cell, in the spirit of spark-in-slurm.

The master and the workers are pyspark's own ``bin/spark-class`` daemons run in the foreground
as children of this process (no ``sbin/start-*.sh``, no pid files in shared places;
``dlscale.spark_node``). Start-up is over when the master's ``/json`` lists every worker ALIVE;
``stop()`` always runs (context manager + the caller's signal handling) and kills everything the
cluster started, down to executors and their Python workers, found by a tag in their environment.

A single-node cell runs its master and worker inside its driver JVM by default (``in_driver``):
Spark's ``local-cluster[1,c,mb]`` master, with which the driver starts a standalone Master and one
Worker of c cores (the classes ``spark-class`` runs as daemons), and the worker starts the
executor as a JVM of its own, as in standalone mode. Measured on a 1-core cell: about 3.5 s less
than two daemon JVMs (README, Performance, step 14). ``spark.single_node_cluster: daemons``
keeps the daemons for single-node cells too.

A multi-node cell (a Slurm allocation of several nodes) runs the master, the driver and the first
worker on the first node, bound to that node's address, and one worker on each other node,
started with ``srun`` as ``python -m dlscale.node_worker``, which binds it to its own node's
address and gives it a scratch directory of its own on that node.

Security: ``spark.authenticate`` with a fresh secret per cluster. The secret reaches the daemons
(remote workers too: ``srun`` passes the environment on) through their environment
(``spark_node.daemon_env``: readable only by this user, never on a command line) and the driver
through a 0600 properties file in the private scratch directory (``driver_env`` has no secret, so
that file is the driver's only source).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set

from dlscale.spark_node import (MKL_CPU_VAR, ClusterError, SparkInstall, daemon_env, kill_tagged, spark_env,
                                spawn_daemon, tagged_pids, worker_argv, write_private_files)

log = logging.getLogger(__name__)


def free_port(host: str) -> int:
    """A port the OS says is free now on ``host`` (another process may still take it: the caller
    retries the start with new ports when a daemon cannot bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def memory_mb(memory: str) -> int:
    """A Spark memory setting ("4g", "512m") in MiB."""
    if not memory[:-1].isdigit() or memory[-1:].lower() not in ("m", "g"):
        raise ValueError("memory %r: use a number of MiB or GiB, e.g. 512m or 4g" % memory)
    return int(memory[:-1]) * (1024 if memory[-1].lower() == "g" else 1)


def command_name(pid: int) -> str:
    """The first words of a process's command line ("" once it is gone), for the log."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return " ".join(handle.read().decode(errors="replace").split("\0")[:3]).strip()
    except OSError:
        return ""


def port_listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


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
    in_driver: bool = False  # the master and worker inside the driver JVM (single node only)
    start_timeout_s: float = 90.0
    tag: str = field(default_factory=lambda: secrets.token_hex(8))
    secret: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    master_url: str = ""
    web_url: str = ""
    _procs: List[subprocess.Popen] = field(default_factory=list, repr=False)
    _names: Dict[int, str] = field(default_factory=dict, repr=False)
    _remote_pids: Set[int] = field(default_factory=set, repr=False)  # the srun of each remote worker

    # --- environment and files -------------------------------------------------------------
    def daemon_env(self) -> Dict[str, str]:
        """The environment of the daemons started here, and of the srun of each remote worker
        (it carries the secret)."""
        return daemon_env(self.install, self.scratch, self.host, self.tag, self.secret)

    def driver_env(self) -> Dict[str, str]:
        """The environment of ``spark-submit`` and the driver: no secret (the driver reads it from
        its 0600 properties file, ``driver_properties``) and none of the daemons' options."""
        env = spark_env(self.install, self.scratch, self.host, self.tag)
        env["PYSPARK_DRIVER_PYTHON"] = self.install.python
        if self.in_driver:
            env["SPARK_HOME"] = self.in_driver_spark_home
        return env

    @property
    def conf_dir(self) -> str:
        return os.path.join(self.scratch, "conf")

    @property
    def in_driver_spark_home(self) -> str:
        """The SPARK_HOME of an in-driver cluster's driver: links to Spark's folders, except
        ``work``, the scratch's. Its worker puts its executors' folders (and their logs) in
        $SPARK_HOME/work, which no setting moves: not in the shared environment."""
        return os.path.join(self.scratch, "spark-home")

    @property
    def secret_file(self) -> str:
        """The driver's properties file: it holds the secret."""
        return os.path.join(self.conf_dir, "driver.conf")

    # --- daemons ---------------------------------------------------------------------------
    def _spawn(self, name: str, command: List[str], remote: bool = False) -> subprocess.Popen:
        env = self.daemon_env()
        if remote and MKL_CPU_VAR not in os.environ:
            env.pop(MKL_CPU_VAR, None)  # another node chooses its MKL kernels for its own CPU
        proc = spawn_daemon(command, env, os.path.join(self.scratch, "logs", name.replace(" ", "-") + ".log"))
        self._procs.append(proc)
        self._names[proc.pid] = name
        if remote:
            self._remote_pids.add(proc.pid)
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(command))
        return proc

    def start(self, attempts: int = 3) -> "StandaloneCluster":
        write_private_files(self.scratch)
        if self.in_driver:
            self._prepare_in_driver()
            return self
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
        self._spawn("master", self.install.spark_class([
            "org.apache.spark.deploy.master.Master", "--host", self.host, "--port", str(port),
            "--webui-port", str(web_port)]))
        self.master_url = "spark://%s:%d" % (self.host, port)
        # A worker can register as soon as the master's RPC port listens (before its web UI).
        self._wait_until(lambda: port_listens(self.host, port), "the master's RPC port")
        self._spawn("worker on %s" % socket.gethostname(), self.install.spark_class(
            worker_argv(self.cores_per_worker, self.worker_memory, self.host, self.master_url)))
        for node in self.remote_nodes:
            self._spawn("worker on %s" % node, self._remote_worker_command(node), remote=True)
        expected = 1 + len(self.remote_nodes)
        self._wait_until(lambda: self.alive_workers(self.master_status()) >= expected,
                         "%d worker(s) to register" % expected)

    def _prepare_in_driver(self) -> None:
        """Nothing starts here: the driver starts the master and worker with its SparkContext."""
        if self.remote_nodes:
            raise ValueError("an in-driver cluster has one node; a multi-node cell runs daemons")
        home = self.in_driver_spark_home
        os.makedirs(home, mode=0o700)
        for name in os.listdir(self.install.spark_home):
            if name != "work":
                os.symlink(os.path.join(self.install.spark_home, name), os.path.join(home, name))
        os.symlink(os.path.join(self.scratch, "work"), os.path.join(home, "work"))
        self.master_url = "local-cluster[1,%d,%d]" % (self.cores_per_worker, memory_mb(self.worker_memory))

    def _remote_worker_command(self, node: str) -> List[str]:
        """``srun`` of one task on ``node`` with a worker's CPUs, running dlscale.node_worker (which
        binds the worker to that node's address and gives it a scratch there). ``--export=ALL``:
        the secret and the tag reach it through the environment, not the command line."""
        return ["srun", "--nodes=1", "--ntasks=1", "--nodelist=" + node, "--export=ALL",
                "--cpus-per-task=%d" % self.cores_per_worker, "--kill-on-bad-exit=1",
                self.install.python, "-m", "dlscale.node_worker", "--cores", str(self.cores_per_worker),
                "--memory", self.worker_memory, "--master", self.master_url]

    def master_status(self) -> Optional[dict]:
        """The master's ``/json`` (its workers and applications), None while it does not answer."""
        try:
            with urllib.request.urlopen(self.web_url + "/json", timeout=2) as response:
                return json.load(response)
        except (OSError, ValueError):
            return None

    @staticmethod
    def alive_workers(master_status: Optional[dict]) -> int:
        """Workers ALIVE in the master's ``/json`` (None: it did not answer)."""
        return sum(1 for worker in (master_status or {}).get("workers", []) if worker.get("state") == "ALIVE")

    def _wait_until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.time() + self.start_timeout_s
        while time.time() < deadline:
            self.check_alive("while waiting for %s" % what)
            if ready():
                return
            time.sleep(0.05)  # polling is cheap; a 0.2 s period cost up to 0.2 s per wait
        raise ClusterError("timed out after %.0f s waiting for %s" % (self.start_timeout_s, what))

    def check_alive(self, when: str = "while the trainer ran", grace_s: float = 0.0) -> None:
        """Raise, naming the daemon and its node, if one died (e.g. a worker JVM killed
        mid-training, or a remote node's worker whose srun step ended), or dies within
        ``grace_s`` seconds."""
        deadline = time.monotonic() + grace_s
        while True:
            for proc in self._procs:
                if proc.poll() is not None:
                    code = proc.returncode
                    how = "killed by %s" % signal.Signals(-code).name if code < 0 else "exit code %d" % code
                    raise ClusterError("the Spark %s (pid %d) died (%s) %s; its log is below"
                                       % (self._names.get(proc.pid, "daemon"), proc.pid, how, when))
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)

    # --- driver ----------------------------------------------------------------------------
    def driver_properties(self, extra: Dict[str, str]) -> str:
        """Write the driver's properties file (0600: it holds the secret) and return its path."""
        classpath = ":".join(self.install.bigdl_jars)
        props = {
            "spark.master": self.master_url,
            "spark.authenticate": "true",
            "spark.authenticate.secret": self.secret,
            "spark.driver.extraClassPath": classpath,
            "spark.executor.extraClassPath": classpath,
            "spark.driver.host": self.host,
            "spark.driver.bindAddress": self.host,
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.executorEnv.OMP_NUM_THREADS": "1",
            "spark.executorEnv.KMP_BLOCKTIME": "0",
            # For an in-driver master and worker, which read the driver's conf: the daemons'
            # DAEMON_OPTS (no kills through their web UIs, no REST submission server).
            "spark.ui.killEnabled": "false",
            "spark.master.rest.enabled": "false",
            # No executorEnv tag: executors inherit the tag of the worker that starts them, so each
            # node's teardown finds its own executors.
        }
        props.update(extra)
        cds = self.install.cds_settings()  # class-data sharing (dlscale.jvm_cds), if built
        for kind in ("driver", "executor"):
            if cds.prefix(kind):
                props["spark.%s.extraClassPath" % kind] = cds.prefix(kind)  # starts with the BigDL jars
            if cds.opts(kind):
                key = "spark.%s.extraJavaOptions" % kind
                props[key] = (props.get(key, "") + " " + cds.opts(kind)).strip()
            if cds.library_path:  # BigDL's MKL, extracted once instead of at every JVM's start
                key = "spark.%s.extraLibraryPath" % kind
                props[key] = ":".join([cds.library_path] + ([props[key]] if props.get(key) else []))
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            for key, value in sorted(props.items()):
                handle.write("%s %s\n" % (key, value))
        return self.secret_file

    def submit_command(self, app: str, app_args: List[str], extra: Dict[str, str]) -> List[str]:
        """``spark-submit`` of ``app`` to this cluster, with the Spark properties ``extra`` on top of
        the cluster's (written to the driver's properties file first)."""
        return [self.install.spark_submit, "--properties-file", self.driver_properties(extra), app] + app_args

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
                    if proc.pid in self._remote_pids:
                        os.kill(proc.pid, signal.SIGUSR1)
                    else:
                        os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        start = time.time()
        for proc in self._procs:
            deadline = start + (remote_grace_s if proc.pid in self._remote_pids else grace_s)
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                log.warning("the Spark %s did not stop in time: SIGKILL", self._names.get(proc.pid))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()
        self._remote_pids.clear()
        # In-driver, the cell ended the driver's process group (its JVM, with the master, the
        # worker and the executor it launched; dlscale.cell.run_trainer): what is left, by the
        # tag, is the executor's Python daemon, which pyspark puts in a process group of its own.
        names = {pid: command_name(pid) for pid in tagged_pids(self.tag)} if self.in_driver else {}
        leftovers = kill_tagged(self.tag, grace_s)
        if leftovers and self.in_driver:
            log.info("stopped the in-driver cluster's remaining process(es) by its tag: %s", names)
        elif leftovers:
            log.info("killed %d leftover process(es) of the cluster: %s", len(leftovers), leftovers)

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
