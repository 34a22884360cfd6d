"""One cell of the study: (dataset, backend, scaling, size, cores, repetition) -> metrics.json.

Runs in the trainer environment (``python -m dlscale.cell ...``, called by the ``train_cell``
rule), inside the cell's Slurm allocation or on a laptop:

1. confine this process, and so every process it starts, to ``cores`` CPUs it has claimed
   (claims are per-CPU lock files, so concurrent cells on one node never share a CPU);
2. make a private scratch directory on node-local storage;
3. start a transient Spark standalone cluster (``dlscale.cluster``), ``spark-submit`` the
   trainer (``dlscale.trainer``), stop the cluster, whatever happened;
4. write metrics.json atomically (temp file + rename), and only when everything succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import fcntl
import glob
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

from dlscale import hoststat
from dlscale.cluster import ClusterError, SparkInstall, StandaloneCluster, die_with_parent, node_address
from dlscale.neighbours import Neighbours

log = logging.getLogger("dlscale.cell")

SCHEMA_VERSION = 1


class CellError(RuntimeError):
    """A cell failed; the message says what and where to look."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGINT/SIGUSR1/SIGHUP (scancel, walltime via --signal,
    Ctrl-C, a closed terminal) so that teardown in ``finally`` blocks runs. BaseException: no
    ``except Exception`` swallows it."""


# SIGHUP: the terminal or session that started the cell closed (a dropped ssh connection: the shell
# passes SIGHUP on to its jobs). Not when the cell was started with SIGHUP ignored (nohup): it stays so.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) + (
    () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,))
_stop_reason: Dict[str, str] = {}  # set by the exit-with-parent watchdog before it signals us


def _raise_terminated(signum, _frame):
    # Only the first signal interrupts: later ones (Slurm signals every process of the job, users
    # press Ctrl-C twice) would otherwise abort the teardown half-way and leave daemons behind.
    for other in STOP_SIGNALS:
        signal.signal(other, _ignore_during_teardown)
    name = signal.Signals(signum).name
    raise Terminated(_stop_reason.get("reason") or
                     "received %s (scancel, the walltime, Ctrl-C or a stopped workflow)" % name)


def _ignore_during_teardown(signum, _frame):
    log.warning("%s ignored: the cell is already stopping", signal.Signals(signum).name)


def exit_with_parent() -> None:
    """Stop the cell (SIGTERM to itself, so teardown runs) if the process that started it dies.

    The rule ``exec``s the cell, so its parent is Snakemake: a SIGKILLed Snakemake would
    otherwise leave the cell training for nobody, next to the same cell started by the rerun.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        _stop_reason["reason"] = ("the process that started this cell (pid %d, e.g. Snakemake) is gone"
                                  % parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


# --- CPU confinement ---------------------------------------------------------------------------
def cpu_lock_dir() -> str:
    return os.environ.get("DLSCALE_CPU_LOCK_DIR") or os.path.join(
        tempfile.gettempdir(), "dlscale-cpu-locks-%d" % os.getuid()
    )


@contextlib.contextmanager
def claimed_cpus(count: int, timeout_s: float = 3600.0, owner: str = "") -> Iterator[List[int]]:
    """Claim ``count`` CPUs of those this process may use (its Slurm allocation, or the machine)
    by holding one lock file per CPU, then confine this process to them.

    With fewer usable CPUs than ``count`` all of them are claimed (the cell is oversubscribed and
    metrics.json says so). Locks are released by the kernel if the process dies. Each held lock
    file names its ``owner`` (and pid), so that other cells can say whom they ran beside
    (``dlscale.neighbours``).
    """
    owner = "%s (pid %d)" % (owner or "a dlscale process", os.getpid())
    usable = sorted(os.sched_getaffinity(0))
    wanted = min(count, len(usable))
    check_private_dir(cpu_lock_dir(), "DLSCALE_CPU_LOCK_DIR")
    deadline = time.time() + timeout_s
    held: Dict[int, int] = {}
    try:
        while len(held) < wanted:
            for cpu in usable:
                if cpu in held or len(held) == wanted:
                    continue
                fd = os.open(os.path.join(cpu_lock_dir(), "cpu%d.lock" % cpu), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held[cpu] = fd
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, owner.encode(), 0)
                except OSError as error:
                    os.close(fd)
                    if error.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
            if len(held) < wanted:
                if time.time() > deadline:
                    raise CellError("waited %.0f s for %d free CPUs of %s" % (timeout_s, wanted, usable))
                time.sleep(0.5)
        cpus = sorted(held)
        os.sched_setaffinity(0, cpus)
        yield cpus
    finally:
        os.sched_setaffinity(0, usable)
        for fd in held.values():
            os.close(fd)  # closing releases the flock


def check_private_dir(path: str, variable: str) -> None:
    """Make ``path`` (mode 0700) or check that it is a directory of this user that nobody else
    may write: its name in /tmp is predictable, and another user who made it first could block
    or fake the CPU claims."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise CellError("%s is not a private directory of this user (owner uid %d, mode %03o): another "
                        "user could block or fake the CPU claims. Remove it, or set %s to a directory "
                        "of your own" % (path, info.st_uid, stat.S_IMODE(info.st_mode), variable))


# --- scratch -----------------------------------------------------------------------------------
def node_local_tmp() -> str:
    """Node-local storage: ``$SLURM_TMPDIR`` (a common site convention) if set, else ``$TMPDIR``
    (through tempfile; the Slurm jobstep plugin drops SLURM_* variables from a rule's
    environment, TMPDIR stays), else /tmp."""
    return os.environ.get("DLSCALE_SCRATCH") or os.environ.get("SLURM_TMPDIR") or tempfile.gettempdir()


SCRATCH_PREFIX = "dlscale-cell-"
OWNER_LOCK = ".owner.lock"  # flock-ed by the cell for as long as it uses its scratch


def remove_stale_scratch(parent: str) -> List[str]:
    """Remove this user's cell scratch directories whose cell died without its teardown (SIGKILL,
    OOM killer): the kernel released their owner lock. Returns the paths removed."""
    removed = []
    try:
        entries = [entry for entry in os.listdir(parent) if entry.startswith(SCRATCH_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(parent, entry)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(path, OWNER_LOCK), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone, not ours, or not made by this version
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its cell is alive
        else:
            log.warning("removing %s, left behind by a cell that was killed", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def private_scratch() -> Iterator[str]:
    parent = node_local_tmp()
    remove_stale_scratch(parent)
    path = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent)  # mode 0700
    # The owner lock appears under its name already locked, so a sweeping cell never takes it.
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".owner-")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, os.path.join(path, OWNER_LOCK))
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def show_logs(scratch: str, lines: int = 40) -> None:
    """Copy the tails of the Spark daemons' and executors' logs into the cell's log: the scratch
    that holds them is removed with the cluster."""
    paths = sorted(glob.glob(os.path.join(scratch, "logs", "*.log")))
    # an executor's stdout holds its Spark log (its errors), its stderr the JVM's and Python's
    paths += sorted(glob.glob(os.path.join(scratch, "work", "app-*", "*", "std*")))
    for path in paths:
        try:
            with open(path, errors="replace") as handle:
                tail = handle.readlines()[-lines:]
        except OSError:
            continue
        sys.stderr.write("----- last %d lines of %s -----\n%s" % (len(tail), os.path.relpath(path, scratch),
                                                                  "".join(tail)))
    sys.stderr.flush()


def allocation_nodes(cores: int, cores_per_node: Optional[int]) -> List[str]:
    """The nodes a cell spans, this one first: [] when it fits on one node (or runs outside Slurm,
    where ``cores_per_node`` does not apply: the cell runs on this machine, flagged
    ``oversubscribed`` if it has too few CPUs). A cell of more cores than one node has needs
    ``ceil(cores / cores_per_node)`` nodes of its Slurm allocation: fewer is an error, and so is
    a node list that ``scontrol show hostnames`` cannot expand."""
    if not cores_per_node or cores <= cores_per_node or not os.environ.get("SLURM_JOB_ID"):
        return []
    needed = -(-cores // cores_per_node)
    job = os.environ["SLURM_JOB_ID"]
    nodelist, count = job_nodelist(job)
    if count < needed:
        raise CellError("this cell needs %d nodes (%d cores, slurm.cores_per_node %d) but its Slurm job %s has %d "
                        "(SLURM_JOB_NODELIST=%s). Fix: submit it with --nodes=%d (the Slurm profile does), or set "
                        "slurm.cores_per_node to the CPUs of one node"
                        % (needed, cores, cores_per_node, job, count, nodelist, needed))
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True,
                             text=True, timeout=60)
        hosts = out.stdout.split()
    except (OSError, subprocess.SubprocessError) as error:
        detail = (getattr(error, "stderr", "") or str(error)).strip()
        raise CellError("cannot read the node list of Slurm job %s: `scontrol show hostnames %s` failed (%s). "
                        "Fix: run the cell inside its Slurm allocation, with Slurm's commands on PATH"
                        % (job, nodelist, detail))
    this = socket.gethostname().split(".")[0]
    if len(hosts) != count or this not in hosts:
        raise CellError("cannot make sense of the node list of Slurm job %s: SLURM_JOB_NODELIST=%r expands to %s, "
                        "expected %d node names including this one (%s). Fix: run the cell inside its own Slurm "
                        "allocation, unchanged" % (job, nodelist, hosts, count, this))
    return [this] + [host for host in hosts if host != this][:needed - 1]


def job_nodelist(job: str) -> Tuple[str, int]:
    """(node list, node count) of Slurm job ``job``: from the job's environment, or, where it is
    not there, from the controller. snakemake-executor-plugin-slurm-jobstep removes every
    SLURM_* variable but the job id from the environment of the command it runs in a job."""
    nodelist, count = os.environ.get("SLURM_JOB_NODELIST"), os.environ.get("SLURM_JOB_NUM_NODES")
    if not nodelist or not count:
        try:
            out = subprocess.run(["scontrol", "show", "job", "--oneliner", job], check=True,
                                 capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as error:
            detail = (getattr(error, "stderr", "") or str(error)).strip()
            raise CellError("cannot read the node list of Slurm job %s: `scontrol show job %s` failed (%s). "
                            "Fix: run the cell inside its Slurm allocation, with Slurm's commands on PATH"
                            % (job, job, detail))
        fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
        nodelist, count = fields.get("NodeList", ""), fields.get("NumNodes", "")
    try:
        return nodelist, int(count.split("-")[0])
    except ValueError:
        return nodelist, 0


# --- the cell ----------------------------------------------------------------------------------
def write_json_atomically(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def global_batch(args: argparse.Namespace) -> int:
    """Strong scaling keeps the published global batch; weak scaling keeps the batch per core."""
    return args.batch_size * args.cores if args.scaling == "weak" else args.batch_size


def jvm_options(cores: int) -> Dict[str, str]:
    """JVM options of the driver and the executor of a cell of ``cores`` CPUs.

    Confined, every JVM thread of the cell shares its ``cores`` CPUs with BigDL's model threads:
    a throughput collector with one thread per core (the default G1 adds concurrent threads),
    and C1 only (``TieredStopAtLevel=1``): C2's compiler threads kept the cell's CPUs busy for
    most of a short training (measured, 5000 records, 1 core: train 37 s with C2, 27 s without;
    the steady-state iteration is no slower, BigDL's arithmetic is in MKL).
    ``DLSCALE_DRIVER_JAVA_OPTS`` / ``DLSCALE_EXECUTOR_JAVA_OPTS`` replace them (for tuning
    experiments; recorded in metrics.json)."""
    base = "-XX:+UseParallelGC -XX:ParallelGCThreads=%d -XX:TieredStopAtLevel=1" % cores
    driver = os.environ.get("DLSCALE_DRIVER_JAVA_OPTS", base)
    executor = os.environ.get("DLSCALE_EXECUTOR_JAVA_OPTS", base)
    return {"spark.driver.extraJavaOptions": driver, "spark.executor.extraJavaOptions": executor}


def run_trainer(cluster: StandaloneCluster, args: argparse.Namespace, scratch: str) -> dict:
    result_path = os.path.join(scratch, "trainer-result.json")
    trainer_app = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer.py")
    app_args = [
        "--train-dir", os.path.abspath(args.train_dir),
        "--test-dir", os.path.abspath(args.test_dir),
        "--out", result_path,
        "--summary-dir", os.path.join(scratch, "summary"),
        "--cores", str(args.cores),
        "--batch-size", str(global_batch(args)),
        "--epochs", str(args.epochs),
        "--optimizer", args.optimizer,
        "--learning-rate", str(args.learning_rate),
        "--seed", str(args.seed),
    ]
    conf = {
        # One executor per worker (node) with that node's cores; all of them together.
        "spark.executor.cores": str(cluster.cores_per_worker),
        "spark.cores.max": str(args.cores),
        "spark.executor.memory": args.executor_memory,
        "spark.driver.memory": args.driver_memory,
        "spark.local.dir": os.path.join(scratch, "local"),
        **jvm_options(cluster.cores_per_worker),
    }
    command = cluster.submit_command(trainer_app, app_args, conf)
    env = cluster.driver_env()
    log.info("spark-submit %s", " ".join(command[1:]))
    sys.stderr.flush()
    # cwd: BigDL writes bigdl.log into the driver's working directory, which must not be shared.
    proc = subprocess.Popen(command, env=env, cwd=scratch, start_new_session=True, preexec_fn=die_with_parent)
    try:
        while proc.poll() is None:
            cluster.check_alive()  # a dead worker would otherwise leave the driver waiting
            time.sleep(1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if proc.returncode != 0 or not os.path.exists(result_path):
        raise CellError("the trainer failed (spark-submit exit code %s); its output is above"
                        % proc.returncode)
    with open(result_path) as handle:
        return json.load(handle)


def cell_id(args: argparse.Namespace) -> str:
    return "n%d/c%d/r%d" % (args.size, args.cores, args.repetition)


def run_cell(args: argparse.Namespace) -> dict:
    started_at = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.time()
    nodes = allocation_nodes(args.cores, args.cores_per_node)
    install = SparkInstall.discover()
    cores_per_node = args.cores // max(1, len(nodes))  # one worker per node of the allocation
    # Loopback for a single-node cell; this node's address (never loopback) across nodes.
    host = node_address(nodes[0]) if nodes else "127.0.0.1"
    tick = time.time()
    owner = "cell %s %s %s %s" % (args.dataset, "bigdl", args.scaling, cell_id(args))
    with claimed_cpus(cores_per_node, owner=owner) as cpus, private_scratch() as scratch:
        cpu_wait = time.time() - tick  # queued behind other cells for free CPUs: not the cell's time
        host_at_start = hoststat.Snapshot(cpus)  # load evidence for the benchmark
        neighbours = Neighbours(cpu_lock_dir(), cpus)  # other cells on this node while it runs
        neighbours.start()
        log.info("cell confined to CPUs %s (asked for %d), scratch %s", cpus, cores_per_node, scratch)
        if nodes:
            log.info("cell spans nodes %s: master and driver on %s (%s), one worker per node", nodes, nodes[0], host)
        cluster = StandaloneCluster(install, scratch, cores_per_worker=cores_per_node,
                                    worker_memory=args.worker_memory, host=host, remote_nodes=nodes[1:])
        tick = time.time()
        succeeded = False
        try:
            cluster.start()
            cluster_start = time.time() - tick
            log.info("Spark standalone cluster up in %.1f s at %s", cluster_start, cluster.master_url)
            result = run_trainer(cluster, args, scratch)
            succeeded = True
        finally:
            tick = time.time()
            cluster.stop()
            cluster_stop = time.time() - tick
            log.info("cluster stopped in %.1f s", cluster_stop)
            overlapping = neighbours.stop()
            if not succeeded:
                show_logs(scratch)
        host_load = hoststat.busy_report(host_at_start, hoststat.Snapshot(cpus))
    if overlapping:
        log.warning("not alone on its node: %s ran beside it", "; ".join(overlapping))
    finished_at = datetime.datetime.now(datetime.timezone.utc)
    trainer_t = result["timings_s"]
    timings = {
        "cluster_start": cluster_start,
        "context_start": trainer_t["context_start"],
        "data_load": trainer_t["data_load"],
        "train": trainer_t["train"],
        "evaluate": trainer_t["evaluate"],
        "cluster_stop": cluster_stop,
        "cpu_wait": cpu_wait,
        "total": time.time() - t0 - cpu_wait,
    }
    executor_cpus = sorted({cpu for view in result["executors"] for cpu in view["cpus_allowed"]})
    spark_conf = result["spark_conf"]  # as the driver's SparkContext has them
    return metrics_record(
        args, "bigdl", result, started_at, finished_at,
        hostnames=sorted(set([socket.gethostname()] + [view["host"] for view in result["executors"]])),
        nodes=nodes or [socket.gethostname()],
        cores_per_node=cores_per_node,
        cpus_allowed=cpus,
        executor_cpus_allowed=executor_cpus,
        # What each executor's Python worker saw: its host and CPUs (one entry per distinct view).
        executors=result["executors"],
        spark_conf=spark_conf,
        # fewer CPUs than asked on this node: the cell's threads outnumber its CPUs
        oversubscribed=len(cpus) < cores_per_node,
        # the executors together could use fewer CPUs than the cell's cores (counted per node)
        undersubscribed=len({(view["host"], cpu) for view in result["executors"]
                             for cpu in view["cpus_allowed"]}) < args.cores,
        # no other dlscale cell held a CPU of this node while it ran (dlscale.neighbours)
        exclusive=not overlapping,
        overlapping_cells=overlapping,
        threads={
            "OMP_NUM_THREADS": sorted({str(view["OMP_NUM_THREADS"]) for view in result["executors"]}),
            "spark.executor.cores": int(spark_conf["spark.executor.cores"]),
            "spark.cores.max": int(spark_conf["spark.cores.max"]),
            "bigdl_model_replicas": args.cores,  # MklBlas engine: one single-threaded copy per core
            **jvm_options(cores_per_node),
        },
        timings_s=timings,
        host_load=host_load,
    )


def metrics_record(args: argparse.Namespace, backend: str, result: dict, started_at: datetime.datetime,
                   finished_at: datetime.datetime, **measured) -> dict:
    """metrics.json of a cell (workflow/schemas/metrics.schema.yaml): the fields every backend
    fills alike, plus ``measured``, what the backend saw itself (hosts, CPUs, threads, timings)."""
    record = {
        "schema_version": SCHEMA_VERSION,
        "dataset": args.dataset,
        "backend": backend,
        "scaling": args.scaling,
        "size": args.size,
        "cores": args.cores,
        "repetition": args.repetition,
        "epochs": args.epochs,
        "batch_size": global_batch(args),
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "versions": result["versions"],
        "records_per_s": result["records_per_s"],
        "train_records": result["train_records"],
        "final_loss": result["final_loss"],
        "test_accuracy": result["test_accuracy"],
        "test_records": result["test_records"],
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
    }
    record.update(measured)
    return record


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one cell of the dlscale study.")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--scaling", choices=["strong", "weak"], default="strong")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--cores", type=int, required=True)
    parser.add_argument("--repetition", type=int, default=1)
    parser.add_argument("--train-dir", required=True)
    parser.add_argument("--test-dir", required=True)
    parser.add_argument("--out", required=True, help="metrics.json to write")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--executor-memory", default="2g")
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument("--worker-memory", default="4g")
    parser.add_argument("--cores-per-node", type=int, default=None,
                        help="CPUs of one node (slurm.cores_per_node): a cell of more cores spans "
                             "ceil(cores / cores-per-node) nodes of its Slurm allocation")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop (with teardown) when the process that started the cell dies")
    return parser.parse_args(argv)


def start_cell_process(with_parent: bool = False) -> None:
    """How every process of a cell starts (the cell, dlscale.node_worker, the PyTorch peer): log
    to stderr, the first stop signal raises Terminated so that teardown runs, and with
    ``with_parent`` stop when the process that started it dies (``exit_with_parent``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_terminated)
    if with_parent:
        exit_with_parent()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    start_cell_process(args.exit_with_parent)
    try:
        metrics = run_cell(args)
        write_json_atomically(args.out, metrics)
    except (CellError, ClusterError, Terminated) as error:
        log.error("cell %s n%d c%d r%d FAILED: %s. Its Spark cluster was stopped and no metrics were "
                  "written; rerun the workflow to run this cell again (it runs only the missing cells)",
                  args.dataset, args.size, args.cores, args.repetition, error)
        return 1
    log.info("cell done: train %.1f s, total %.1f s, %.0f records/s, accuracy %.4f -> %s",
             metrics["timings_s"]["train"], metrics["timings_s"]["total"], metrics["records_per_s"],
             metrics["test_accuracy"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
