"""The nodes a cell spans: the first ``ceil(cores / cores_per_node)`` nodes of its Slurm
allocation, this one first (where the master, the driver and the first worker run)."""

from __future__ import annotations

import os
import socket
import subprocess
from typing import List, Optional, Tuple

from dlscale.cell_process import CellError


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
