"""The floor of a cell's fixed cost: an empty Spark application on a cell's own cluster.

A cell's cluster and driver exactly as a cell starts them (the in-driver master and worker, the
cell's Spark properties and JVM options, `dlscale.cell.submit_conf`, class-data sharing,
`spark.authenticate`), confined to ``--cores`` CPUs, and
a driver that does nothing but start its SparkContext, run one Python task (which starts the
executor JVM and its Python worker, as a cell's first data load does) and stop. No BigDL, no
data, no model. Whatever a cell costs beyond this is BigDL's and the study's own work.

    .venv/trainer/bin/python tests/perf/spark_floor.py [--cores 1] [--runs 3]

Prints, per run: `driver_start` (spark-submit until the driver's Python runs), `context_start`
(its SparkContext), `first_task` (one task of one record on the executor), `stop`
(``sc.stop()``) and `submit_to_exit` (spark-submit's whole run). A cell does not wait for its
driver's stop (README, Performance, step 12), so its floor is the sum of the first three.
Not a test: speed is measured here and in `make bench`, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))


def one_run(cores: int) -> dict:
    from dlscale.cell import DRIVER_MEMORY, EXECUTOR_MEMORY, submit_conf
    from dlscale.cluster import StandaloneCluster
    from dlscale.spark_node import SparkInstall

    scratch = tempfile.mkdtemp(prefix="dlscale-spark-floor-")
    out = os.path.join(scratch, "floor.json")
    cluster = StandaloneCluster(SparkInstall.discover(), scratch, cores_per_worker=cores, in_driver=True)
    try:
        cluster.start()
        conf = submit_conf(cores, cores, EXECUTOR_MEMORY, DRIVER_MEMORY, scratch)  # a cell's own
        command = cluster.submit_command(os.path.abspath(__file__), ["--driver", out, "--submitted", repr(time.time())],
                                         conf)
        tick = time.time()
        with open(os.path.join(scratch, "driver.log"), "w") as log:
            code = subprocess.run(command, env=cluster.driver_env(), stdout=log, stderr=subprocess.STDOUT).returncode
        submit_to_exit = time.time() - tick
        if code != 0:
            raise SystemExit("the empty application failed (%d); its log: %s" % (code, os.path.join(scratch, "driver.log")))
        with open(out) as handle:
            phases = json.load(handle)
        phases["submit_to_exit"] = round(submit_to_exit, 2)
        return phases
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def driver(out: str, submitted: float) -> int:
    python_runs = time.time()
    from pyspark import SparkContext

    sc = SparkContext()
    context = time.time()
    sc.parallelize([0], 1).map(lambda x: x + 1).collect()
    first_task = time.time()
    sc.stop()
    stopped = time.time()
    with open(out, "w") as handle:
        json.dump({"driver_start": round(python_runs - submitted, 2), "context_start": round(context - python_runs, 2),
                   "first_task": round(first_task - context, 2), "stop": round(stopped - first_task, 2)}, handle)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    parser.add_argument("--submitted", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        return driver(args.driver, args.submitted)
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < args.cores:
        raise SystemExit("--cores %d: only %d CPUs may be used here" % (args.cores, len(allowed)))
    os.sched_setaffinity(0, allowed[:args.cores])  # as a cell confines itself (and all it starts)
    print("| run | driver_start | context_start | first_task | floor (their sum) | stop | submit_to_exit |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for run in range(1, args.runs + 1):
        p = one_run(args.cores)
        floor = p["driver_start"] + p["context_start"] + p["first_task"]
        print("| %d | %.2f | %.2f | %.2f | **%.2f** | %.2f | %.2f |" % (
            run, p["driver_start"], p["context_start"], p["first_task"], floor, p["stop"], p["submit_to_exit"]),
            flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
