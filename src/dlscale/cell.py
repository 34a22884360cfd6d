"""One cell of the study: (dataset, backend, scaling, size, cores, repetition) -> metrics.json.

Runs in the trainer environment (``python -m dlscale.cell ...``, called by the ``train_cell``
rule), inside the cell's Slurm allocation or on a laptop:

1. confine this process, and so every process it starts, to ``cores`` CPUs it has claimed
   (``dlscale.cpu_claims``: per-CPU lock files, so concurrent cells on one node never share a
   CPU), on each node it spans (``dlscale.allocation``);
2. make a private scratch directory on node-local storage (``dlscale.scratch``);
3. start a transient Spark standalone cluster (``dlscale.cluster``; on one node by default its
   master and worker run inside the driver JVM), ``spark-submit`` the trainer
   (``dlscale.trainer``), stop the cluster, whatever happened;
4. write metrics.json atomically (temp file + rename), and only when everything succeeded.

Stop signals and failures are handled as in every process of a cell (``dlscale.cell_process``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

from dlscale import hoststat
from dlscale.allocation import allocation_nodes
from dlscale.cell_process import CellError, Terminated, start_cell_process
from dlscale.cluster import StandaloneCluster
from dlscale.cpu_claims import claimed_cpus, cpu_lock_dir
from dlscale.neighbours import Neighbours
from dlscale.paths import SUBSET_ARRAYS
from dlscale.phases import process_started_at, unaccounted
from dlscale.scratch import private_scratch
from dlscale.spark_node import (BIGDL_JVM_OPTS, MKL_CPU_VAR, ClusterError, SparkInstall, die_with_parent,
                                 node_address, show_log_tails)

log = logging.getLogger("dlscale.cell")

EXECUTOR_MEMORY = DRIVER_MEMORY = "2g"  # a cell's defaults (--executor-memory, --driver-memory)

SCHEMA_VERSION = 1
# How long a failed trainer waits to learn that a remote worker died: its node's
# dlscale.node_worker stops the node's executors, prints their logs and exits, then srun ends.
REMOTE_WORKER_DEATH_NOTICE_S = 10.0
RESULT_POLL_S = 0.05  # how often the cell looks for the trainer's result while the driver runs


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
    experiments; recorded in metrics.json), and ``BIGDL_JVM_OPTS`` (their log and temporary files
    in the cell's scratch) are always added."""
    base = "-XX:+UseParallelGC -XX:ParallelGCThreads=%d -XX:TieredStopAtLevel=1" % cores
    driver = os.environ.get("DLSCALE_DRIVER_JAVA_OPTS", base)
    executor = os.environ.get("DLSCALE_EXECUTOR_JAVA_OPTS", base)
    return {"spark.driver.extraJavaOptions": "%s %s" % (driver, BIGDL_JVM_OPTS),
            "spark.executor.extraJavaOptions": "%s %s" % (executor, BIGDL_JVM_OPTS)}


def submit_conf(cores_per_worker: int, cores: int, executor_memory: str, driver_memory: str,
                scratch: str) -> Dict[str, str]:
    """The Spark properties a cell's driver is submitted with, on top of its cluster's."""
    return {
        # One executor per worker (node) with that node's cores; all of them together.
        "spark.executor.cores": str(cores_per_worker),
        "spark.cores.max": str(cores),
        "spark.executor.memory": executor_memory,
        "spark.driver.memory": driver_memory,
        "spark.local.dir": os.path.join(scratch, "local"),
        **jvm_options(cores_per_worker),
    }


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
    conf = submit_conf(cluster.cores_per_worker, args.cores, args.executor_memory, args.driver_memory, scratch)
    command = cluster.submit_command(trainer_app, app_args, conf)
    env = cluster.driver_env()
    log.info("spark-submit %s", " ".join(command[1:]))
    sys.stderr.flush()
    # cwd: BigDL writes bigdl.log into the driver's working directory, which must not be shared.
    submitted = time.time()
    proc = subprocess.Popen(command, env=env, cwd=scratch, start_new_session=True, preexec_fn=die_with_parent)
    result_written = False
    try:
        last_check = time.time()
        while True:
            try:
                proc.wait(timeout=RESULT_POLL_S)
                break
            except subprocess.TimeoutExpired:
                if os.path.exists(result_path):  # written atomically, before the driver's own stop
                    result_written = True
                    break
                if time.time() - last_check >= 1:
                    last_check = time.time()
                    cluster.check_alive()  # a dead worker would otherwise leave the driver waiting
        if result_written:
            log.info("trainer result written: its driver stops with the cluster")
    finally:
        if proc.poll() is None:
            # With its result written, the driver's own stop (sc.stop: ~1 s at 1 core, mostly
            # waiting) is no work of the cell's: the cluster's teardown that follows stops its
            # executors anyway. Otherwise (a signal, a dead worker) it gets SIGTERM first.
            os.killpg(proc.pid, signal.SIGKILL if result_written else signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    exited = time.time()  # the driver's processes are gone: the end of driver_stop
    if not result_written and (proc.returncode != 0 or not os.path.exists(result_path)):
        # A worker's death fails the driver too, and a remote worker's reaches this node only
        # when its srun step ends, which can be after the driver gave up: name the worker if so.
        grace_s = REMOTE_WORKER_DEATH_NOTICE_S if cluster.remote_nodes else 0.0
        cluster.check_alive("before the trainer failed", grace_s=grace_s)
        raise CellError("the trainer failed (spark-submit exit code %s); its output is above"
                        % proc.returncode)
    with open(result_path) as handle:
        result = json.load(handle)
    clock, trainer_t = result["clock"], result["timings_s"]
    # the driver's start and stop on the cell's clock (dlscale.phases)
    result["driver_start"] = clock["begin"] - submitted
    result["driver_stop"] = exited - clock["begin"] - sum(
        trainer_t[phase] for phase in ("context_start", "data_load", "model_setup", "train", "evaluate"))
    return result


def cell_id(args: argparse.Namespace) -> str:
    return "n%d/c%d/r%d" % (args.size, args.cores, args.repetition)


def check_data_dirs(*data_dirs: str) -> None:
    """Fail before any Spark process starts if a data folder lacks the arrays the executors read
    (a folder made by a dlscale older than them, or damaged): in Spark it would be a task error."""
    for data_dir in data_dirs:
        missing = [name for name in SUBSET_ARRAYS if not os.path.isfile(os.path.join(data_dir, name))]
        if missing:
            raise CellError("%s has no %s (the arrays the executors read; dlscale.partition writes them). "
                            "Fix: rerun the workflow, which remakes the folder (its partition rule's params "
                            "changed), or delete the folder and rerun" % (data_dir, " or ".join(missing)))


def run_cell(args: argparse.Namespace, process_start: Optional[float] = None) -> dict:
    """The cell, up to its metrics; ``finish_timings`` adds its exit phase and total."""
    check_data_dirs(args.train_dir, args.test_dir)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    t0 = process_started_at() if process_start is None else process_start
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
                                    worker_memory=args.worker_memory, host=host, remote_nodes=nodes[1:],
                                    in_driver=len(nodes) <= 1 and args.single_node_cluster == "in-driver")
        tick = time.time()
        cell_start = tick - t0 - cpu_wait  # interpreter, imports, CPU claim, scratch, monitors
        succeeded = False
        try:
            cluster.start()
            cluster_start = time.time() - tick
            if cluster.in_driver:
                log.info("Spark standalone master and worker to start in the driver JVM (%s)", cluster.master_url)
            else:
                log.info("Spark standalone cluster up in %.1f s at %s", cluster_start, cluster.master_url)
            result = run_trainer(cluster, args, scratch)
            succeeded = True
        finally:
            tick = time.time()
            cluster.stop()
            cluster_stop = time.time() - tick
            stopped = time.time()
            log.info("cluster stopped in %.1f s", cluster_stop)
            overlapping = neighbours.stop()
            if not succeeded:
                show_log_tails(scratch)
        host_load = hoststat.busy_report(host_at_start, hoststat.Snapshot(cpus))
    if overlapping:
        log.warning("not alone on its node: %s ran beside it", "; ".join(overlapping))
    finished_at = datetime.datetime.now(datetime.timezone.utc)
    trainer_t = result["timings_s"]
    timings = {
        "cell_start": cell_start,
        "cluster_start": cluster_start,
        "driver_start": result["driver_start"],
        "context_start": trainer_t["context_start"],
        "data_load": trainer_t["data_load"],
        "model_setup": trainer_t["model_setup"],
        "train": trainer_t["train"],
        "evaluate": trainer_t["evaluate"],
        "driver_stop": result["driver_stop"],
        "cluster_stop": cluster_stop,
        "cpu_wait": cpu_wait,
        # cell_exit and total: finish_timings, just before the metrics are written
        "_t0": t0,
        "_stopped": stopped,
    }
    executor_cpus = sorted({cpu for view in result["executors"] for cpu in view["cpus_allowed"]})
    return metrics_record(
        args, "bigdl", result, started_at, finished_at,
        hostnames=sorted(set([socket.gethostname()] + [view["host"] for view in result["executors"]])),
        nodes=nodes or [socket.gethostname()],
        cores_per_node=cores_per_node,
        cpus_allowed=cpus,
        executor_cpus_allowed=executor_cpus,
        # What each executor's Python worker saw: its host and CPUs (one entry per distinct view).
        executors=result["executors"],
        spark_conf=result["spark_conf"],  # as the driver's SparkContext had them
        # fewer CPUs than asked on this node: the cell's threads outnumber its CPUs
        oversubscribed=len(cpus) < cores_per_node,
        # the executors together could use fewer CPUs than the cell's cores (counted per node)
        undersubscribed=len({(view["host"], cpu) for view in result["executors"]
                             for cpu in view["cpus_allowed"]}) < args.cores,
        # no other dlscale cell held a CPU of this node while it ran (dlscale.neighbours)
        exclusive=not overlapping,
        overlapping_cells=overlapping,
        threads=threads_in_force(result),
        mkl_library=result["mkl_library"],
        timings_s=timings,
        host_load=host_load,
    )


def finish_timings(metrics: dict) -> dict:
    """The cell's exit phase (after the cluster stopped until now, just before its metrics are
    written) and its total (process start to now, without ``cpu_wait``); warns when the phases
    leave more than a second of it unaccounted."""
    timings = metrics["timings_s"]
    t0, stopped, now = timings.pop("_t0"), timings.pop("_stopped"), time.time()
    timings["cell_exit"] = now - stopped
    timings["total"] = now - t0 - timings["cpu_wait"]
    gap = unaccounted(timings)
    if abs(gap) > 1.0:
        log.warning("the cell's phases leave %.1f s of its total %.1f s unaccounted", gap, timings["total"])
    return metrics


def threads_in_force(result: dict) -> Dict[str, object]:
    """The thread settings of a cell as its trainer found them (``result``): the executors'
    OMP_NUM_THREADS and MKL_DEBUG_CPU_TYPE, the SparkContext's cores, the JVMs' options, and
    BigDL's model replicas (its MklBlas engine trains one single-threaded copy per core of each
    node)."""
    spark_conf, engine = result["spark_conf"], result["bigdl_engine"]
    return {
        "OMP_NUM_THREADS": sorted({str(view["OMP_NUM_THREADS"]) for view in result["executors"]}),
        # "5": MKL's AVX2 kernels on an AMD CPU (dlscale.spark_node.mkl_cpu_setting); MKL's own choice if unset
        MKL_CPU_VAR: sorted({view.get(MKL_CPU_VAR) or "unset" for view in result["executors"]}),
        "spark.executor.cores": int(spark_conf["spark.executor.cores"]),
        "spark.cores.max": int(spark_conf["spark.cores.max"]),
        "bigdl_model_replicas": engine["nodes"] * engine["cores_per_node"],
        **result["jvm_options"],
    }


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
    parser.add_argument("--executor-memory", default=EXECUTOR_MEMORY)
    parser.add_argument("--driver-memory", default=DRIVER_MEMORY)
    parser.add_argument("--worker-memory", default="4g")
    parser.add_argument("--cores-per-node", type=int, default=None,
                        help="CPUs of one node (slurm.cores_per_node): a cell of more cores spans "
                             "ceil(cores / cores-per-node) nodes of its Slurm allocation")
    parser.add_argument("--single-node-cluster", choices=["in-driver", "daemons"], default="in-driver",
                        help="a single-node cell's master and worker: inside its driver JVM (Spark's "
                             "local-cluster master) or bin/spark-class daemons; a multi-node cell always "
                             "runs daemons (spark.single_node_cluster)")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop (with teardown) when the process that started the cell dies")
    return parser.parse_args(argv)


def record_cell(args: argparse.Namespace, run: Callable[[argparse.Namespace], dict], name: str = "cell",
                caught: Tuple[type, ...] = (CellError, ClusterError),
                after_failure: str = "Its Spark cluster was stopped and no metrics were written",
                log_traceback: bool = False) -> int:
    """Run one cell (``run``: this module's ``run_cell``, or a peer backend's) as its own process
    and write its metrics; one ``done`` or ``FAILED`` line either way. Returns the exit code."""
    start_cell_process(args.exit_with_parent)
    try:
        metrics = finish_timings(run(args))
        write_json_atomically(args.out, metrics)
    except (*caught, Terminated) as error:
        if log_traceback and not isinstance(error, Terminated):
            log.exception("the %s failed", name)  # the traceback, for errors of a library or the data
        log.error("%s %s n%d c%d r%d FAILED: %s. %s; rerun the workflow to run this cell again (it runs only "
                  "the missing cells)", name, args.dataset, args.size, args.cores, args.repetition, error,
                  after_failure)
        return 1
    log.info("%s done: train %.1f s, total %.1f s, %.0f records/s, accuracy %.4f -> %s", name,
             metrics["timings_s"]["train"], metrics["timings_s"]["total"], metrics["records_per_s"],
             metrics["test_accuracy"], args.out)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return record_cell(parse_args(argv), run_cell)


if __name__ == "__main__":
    sys.exit(main())
