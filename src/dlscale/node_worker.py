"""The Spark worker of one remote node of a multi-node cell (``python -m dlscale.node_worker``).

A cell whose cores span several nodes runs its master, driver and first worker on the first node
of its Slurm allocation (``dlscale.cell``) and starts this, with ``srun``, once on every other
node. Here, on that node, it:

1. claims the worker's CPUs on this node (``dlscale.cpu_claims.claimed_cpus``: the same per-CPU lock
   files as a cell, so cells sharing the node never share a CPU) and confines itself to them;
2. makes the worker's private scratch on this node's local storage (``$SLURM_TMPDIR`` or /tmp);
3. runs pyspark's own ``bin/spark-class`` Worker in the foreground, bound to this node's address
   (never 0.0.0.0, never loopback) and registered with the cell's master, with the cluster's
   secret from the environment ``srun`` passed on (never on a command line);
4. on a stop signal (SIGUSR1: the cell's teardown, forwarded by srun; SIGTERM: scancel, the
   walltime) or when the worker dies, stops the worker and everything carrying this node's tag
   (executors, Python workers), prints the tails of the executors' logs (they are in the scratch
   about to go, and this output reaches the cell's log) and removes the scratch. It exits
   non-zero, naming the node, if the worker died on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import List, Optional

from dlscale.cell_process import Terminated, start_cell_process
from dlscale.cpu_claims import claimed_cpus
from dlscale.scratch import private_scratch
from dlscale.spark_node import (CLUSTER_TAG_VAR, SECRET_VAR, SparkInstall, daemon_env, kill_tagged, node_address,
                                show_log_tails, spawn_daemon, worker_argv, write_private_files)

log = logging.getLogger("dlscale.node_worker")


def run_worker(args: argparse.Namespace) -> int:
    node = socket.gethostname()
    address = node_address(node)
    secret = os.environ.get(SECRET_VAR)
    cluster_tag = os.environ.get(CLUSTER_TAG_VAR)
    if not secret or not cluster_tag:
        log.error("started without the cluster's secret or tag in the environment: dlscale.node_worker is "
                  "started by dlscale.cell with srun --export=ALL, not by hand")
        return 2
    # A tag of this node's own: this node's teardown finds what this node started, and nothing
    # here relies on the first node's teardown reaching processes on other nodes.
    tag = "%s@%s" % (cluster_tag, node)
    install = SparkInstall.discover()
    with claimed_cpus(args.cores) as cpus, private_scratch() as scratch:
        log.info("node %s (%s): worker confined to CPUs %s, scratch %s", node, address, cpus, scratch)
        write_private_files(scratch)
        env = daemon_env(install, scratch, address, tag, secret)
        worker = spawn_daemon(install.spark_class(worker_argv(args.cores, args.memory, address, args.master)),
                              env, log_path=None)
        try:
            code = worker.wait()
            how = "killed by %s" % signal.Signals(-code).name if code < 0 else "exit code %d" % code
            log.error("the Spark worker on node %s (pid %d) died (%s)", node, worker.pid, how)
            return 1
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)  # its shutdown hook stops its executors
                try:
                    worker.wait(timeout=10)
                except Exception:  # noqa: BLE001 - a TimeoutExpired or a second signal: kill it
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
            leftovers = kill_tagged(tag)
            if leftovers:
                log.info("node %s: killed %d leftover process(es): %s", node, len(leftovers), leftovers)
            show_log_tails(scratch, node)
            log.info("node %s: worker stopped, scratch %s removed", node, scratch)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The Spark worker of one remote node of a multi-node cell.")
    parser.add_argument("--cores", type=int, required=True, help="this node's cores for the cell")
    parser.add_argument("--memory", required=True, help="the worker's memory for executors, e.g. 4g")
    parser.add_argument("--master", required=True, help="the cell's master URL, spark://host:port")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    start_cell_process()
    try:
        return run_worker(args)
    except Terminated as stop:
        log.info("node %s: stopped (%s)", socket.gethostname(), stop)
        return 0
    except Exception as error:  # noqa: BLE001 - one line naming the node reaches the cell's log
        log.error("node %s: the worker could not run: %s", socket.gethostname(), error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
