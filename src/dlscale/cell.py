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
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional

from dlscale.cluster import ClusterError, SparkInstall, StandaloneCluster

log = logging.getLogger("dlscale.cell")

SCHEMA_VERSION = 1


class CellError(RuntimeError):
    """A cell failed; the message says what and where to look."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGINT/SIGUSR1 (scancel, walltime via --signal) so that
    teardown in ``finally`` blocks runs. BaseException: no ``except Exception`` swallows it."""


def _raise_terminated(signum, _frame):
    raise Terminated("received signal %s" % signal.Signals(signum).name)


# --- CPU confinement ---------------------------------------------------------------------------
def cpu_lock_dir() -> str:
    return os.environ.get("DLSCALE_CPU_LOCK_DIR") or os.path.join(
        tempfile.gettempdir(), "dlscale-cpu-locks-%d" % os.getuid()
    )


@contextlib.contextmanager
def claimed_cpus(count: int, timeout_s: float = 3600.0) -> Iterator[List[int]]:
    """Claim ``count`` CPUs of those this process may use (its Slurm allocation, or the machine)
    by holding one lock file per CPU, then confine this process to them.

    With fewer usable CPUs than ``count`` all of them are claimed (the cell is oversubscribed and
    metrics.json says so). Locks are released by the kernel if the process dies.
    """
    usable = sorted(os.sched_getaffinity(0))
    wanted = min(count, len(usable))
    os.makedirs(cpu_lock_dir(), mode=0o700, exist_ok=True)
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


# --- scratch -----------------------------------------------------------------------------------
def node_local_tmp() -> str:
    """Node-local storage: Slurm's per-job TMPDIR if set, else the system temp dir."""
    return os.environ.get("DLSCALE_SCRATCH") or os.environ.get("SLURM_TMPDIR") or tempfile.gettempdir()


@contextlib.contextmanager
def private_scratch() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="dlscale-cell-", dir=node_local_tmp())  # mode 0700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def slurm_nodes() -> List[str]:
    """Hostnames of a multi-node Slurm allocation ([] for one node or no Slurm)."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist or int(os.environ.get("SLURM_JOB_NUM_NODES", "1")) <= 1:
        return []
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                         capture_output=True, text=True).stdout
    return out.split()


# --- the cell ----------------------------------------------------------------------------------
def write_json_atomically(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def global_batch(args: argparse.Namespace) -> int:
    """Strong scaling keeps the published global batch; weak scaling keeps the batch per core."""
    return args.batch_size * args.cores if args.scaling == "weak" else args.batch_size


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
        "spark.executor.cores": str(args.cores),
        "spark.cores.max": str(args.cores),
        "spark.executor.memory": args.executor_memory,
        "spark.driver.memory": args.driver_memory,
        "spark.local.dir": os.path.join(scratch, "local"),
    }
    command = cluster.submit_command(trainer_app, app_args, conf)
    env = cluster.daemon_env()
    log.info("spark-submit %s", " ".join(command[1:]))
    sys.stderr.flush()
    proc = subprocess.Popen(command, env=env, start_new_session=True)
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


# Test-only fault switch: a comma-separated list of cell ids ("n256/c2/r1") that fail at once.
# Used by the rerun tests to make one cell fail while the others complete.
FAIL_CELLS_VAR = "DLSCALE_FAIL_CELLS"


def check_injected_fault(args: argparse.Namespace) -> None:
    if cell_id(args) in os.environ.get(FAIL_CELLS_VAR, "").split(","):
        raise CellError("fault injected by %s for cell %s (tests only)" % (FAIL_CELLS_VAR, cell_id(args)))


def run_cell(args: argparse.Namespace) -> dict:
    check_injected_fault(args)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.time()
    nodes = slurm_nodes()
    install = SparkInstall.discover()
    cores_per_node = args.cores // max(1, len(nodes))  # one worker per node of the allocation
    with claimed_cpus(cores_per_node) as cpus, private_scratch() as scratch:
        log.info("cell confined to CPUs %s (asked for %d), scratch %s", cpus, cores_per_node, scratch)
        host = socket.gethostname() if nodes else "127.0.0.1"  # loopback unless spanning nodes
        cluster = StandaloneCluster(install, scratch, cores_per_worker=cores_per_node,
                                    worker_memory=args.worker_memory, host=host, worker_nodes=nodes)
        tick = time.time()
        try:
            cluster.start()
            cluster_start = time.time() - tick
            log.info("Spark standalone cluster up in %.1f s at %s", cluster_start, cluster.master_url)
            result = run_trainer(cluster, args, scratch)
        finally:
            tick = time.time()
            cluster.stop()
            cluster_stop = time.time() - tick
            log.info("cluster stopped in %.1f s", cluster_stop)
    finished_at = datetime.datetime.now(datetime.timezone.utc)
    trainer_t = result["timings_s"]
    timings = {
        "cluster_start": cluster_start,
        "context_start": trainer_t["context_start"],
        "data_load": trainer_t["data_load"],
        "train": trainer_t["train"],
        "evaluate": trainer_t["evaluate"],
        "cluster_stop": cluster_stop,
        "total": time.time() - t0,
    }
    executor_cpus = sorted({cpu for view in result["executors"] for cpu in view["cpus_allowed"]})
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": args.dataset,
        "backend": "bigdl",
        "scaling": args.scaling,
        "size": args.size,
        "cores": args.cores,
        "repetition": args.repetition,
        "epochs": args.epochs,
        "batch_size": global_batch(args),
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "hostnames": sorted(set([socket.gethostname()] + [view["host"] for view in result["executors"]])),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cpus_allowed": cpus,
        "executor_cpus_allowed": executor_cpus,
        "oversubscribed": len(cpus) < cores_per_node,
        "threads": {
            "OMP_NUM_THREADS": sorted({str(view["OMP_NUM_THREADS"]) for view in result["executors"]}),
            "spark.executor.cores": args.cores,
            "bigdl_model_replicas": args.cores,  # MklBlas engine: one single-threaded copy per core
        },
        "versions": result["versions"],
        "timings_s": timings,
        "records_per_s": result["records_per_s"],
        "train_records": result["train_records"],
        "final_loss": result["final_loss"],
        "test_accuracy": result["test_accuracy"],
        "test_records": result["test_records"],
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
    }


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
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--executor-memory", default="2g")
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument("--worker-memory", default="4g")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, _raise_terminated)
    try:
        metrics = run_cell(args)
    except (CellError, ClusterError, Terminated) as error:
        log.error("cell %s n%d c%d r%d FAILED: %s", args.dataset, args.size, args.cores, args.repetition, error)
        return 1
    write_json_atomically(args.out, metrics)
    log.info("cell done: train %.1f s, total %.1f s, %.0f records/s, accuracy %.4f -> %s",
             metrics["timings_s"]["train"], metrics["timings_s"]["total"], metrics["records_per_s"],
             metrics["test_accuracy"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
