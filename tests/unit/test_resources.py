"""What a cell asks the scheduler for (dlscale.resources), and how the Slurm plugins turn it into
sbatch options and the job step: one node as it always was, across nodes one task per node and
no `srun -n1` around the cell."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
from snakemake.iocontainers import ResourceList
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm_jobstep import Executor as JobstepExecutor

from dlscale.resources import (
    WALLTIME_WARNING,
    CellResources,
    cell_mem_mb,
    cell_runtime,
    cpus_per_node,
    default_slurm_extra_warning,
    nodes_needed,
)

SIZING = CellResources(cores_per_node=8, epochs=1, exclusive=True)


def cell(cores: int, size: int = 1000) -> SimpleNamespace:
    return SimpleNamespace(dataset="mnist", scaling="strong", size=str(size), cores=str(cores), rep="1")


@pytest.mark.parametrize("cores,nodes,per_node", [(1, 1, 1), (8, 1, 8), (16, 2, 8), (32, 4, 8)])
def test_nodes_and_cpus_per_node(cores, nodes, per_node):
    assert nodes_needed(cores, 8) == nodes and cpus_per_node(cores, 8) == per_node


def test_memory_and_runtime_grow_with_size_and_double_on_retry():
    assert cell_mem_mb("bigdl", 60000) == 12000 and cell_mem_mb("bigdl", 60000, attempt=2) == 24000
    assert cell_mem_mb("torch", 60000) == 4000 and cell_mem_mb("torch", 1000, attempt=2) == 8000
    # 15 minutes of start-up plus 60000 records at 20 records/s on each of a node's 8 cores
    assert cell_runtime(60000, 32, epochs=1, cores_per_node=8) == 21
    assert cell_runtime(60000, 32, epochs=1, cores_per_node=8, attempt=2) == 42
    assert cell_runtime(1000, 1, epochs=4, cores_per_node=8) == 18


def test_exclusive_cells_hold_the_timed_cell_and_whole_nodes():
    assert SIZING.timed_cell == 1 and SIZING.slurm_extra == f"{WALLTIME_WARNING} --exclusive"
    shared = CellResources(cores_per_node=8, epochs=1, exclusive=False)
    assert shared.timed_cell == 0 and shared.slurm_extra == WALLTIME_WARNING


def evaluated(wildcards, attempt: int = 1) -> dict:
    """train_cell's resources as Snakemake evaluates them: a None leaves the resource unset."""
    values = {
        "cpus_per_task": SIZING.cpus_per_task(wildcards),
        "nodes": SIZING.nodes(wildcards),
        "tasks": SIZING.tasks(wildcards),
        "mpi": SIZING.mpi(wildcards),
        "mem_mb": SIZING.bigdl_mem_mb(wildcards, attempt),
        "runtime": SIZING.runtime(wildcards, attempt),
        "slurm_extra": SIZING.slurm_extra,
    }
    return {key: value for key, value in values.items() if value is not None}


def test_one_node_leaves_nodes_tasks_and_mpi_unset():
    assert evaluated(cell(8)) == {"cpus_per_task": 8, "mem_mb": 6100, "runtime": 15,
                                  "slurm_extra": "--signal=USR1@120 --exclusive"}


def test_across_nodes_one_task_per_node_and_mpi():
    resources = evaluated(cell(32))
    assert (resources["nodes"], resources["tasks"], resources["cpus_per_task"], resources["mpi"]) == (4, 4, 8, "srun")


def sbatch_line(wildcards) -> str:
    job = SimpleNamespace(resources=ResourceList(fromdict=evaluated(wildcards)), threads=int(wildcards.cores))
    params = dict(run_uuid="uuid", slurm_logfile="log", comment_str="c", account="", partition="", workdir="")
    return get_submit_command(job, params)


def test_sbatch_of_a_one_node_cell():
    words = sbatch_line(cell(4)).split()
    assert "--ntasks=1" in words and "--cpus-per-task=4" in words
    assert not [w for w in words if w.startswith("--nodes")]


def test_sbatch_of_a_cell_across_nodes():
    words = sbatch_line(cell(16)).split()
    assert {"--nodes=2", "--ntasks=2", "--cpus-per-task=8", "--exclusive", WALLTIME_WARNING} <= set(words)
    assert words.count("--ntasks=2") == 1 and "--ntasks=1" not in words


def test_the_jobstep_wraps_in_srun_unless_mpi_is_set():
    """The jobstep plugin runs a job in `srun -n1 ...` unless its resources name `mpi` (then the
    command starts its own steps); this is what a multi-node cell relies on."""
    source = inspect.getsource(JobstepExecutor.run_job)
    assert 'if "mpi" in job.resources.keys():' in source and 'call = "srun -n1' in source
    assert "mpi" not in evaluated(cell(8)) and "mpi" in evaluated(cell(16))


def test_default_slurm_extra_is_warned_about():
    assert default_slurm_extra_warning(None) is None
    assert default_slurm_extra_warning({"slurm_partition": "p"}) is None
    assert WALLTIME_WARNING in default_slurm_extra_warning({"slurm_extra": "--qos=x"})
