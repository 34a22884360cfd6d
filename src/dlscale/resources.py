"""What each job of the workflow asks the scheduler for: CPUs, nodes, memory, runtime.

The rules (workflow/rules/*.smk) name these as their ``resources``. The local executor uses only
``threads`` and ``timed_cell``; the Slurm executor turns the rest into sbatch options. The
resources of a cell are callables: Snakemake calls them with the job's wildcards (and, for
memory and runtime, its attempt: a retry gets twice as much).

How a cell reaches Slurm (snakemake-executor-plugin-slurm 2.8.0 and its jobstep plugin):

- on one node (``cores <= slurm.cores_per_node``): ``--ntasks=1 --cpus-per-task=<cores>``; in
  the job, the jobstep runs the cell in ``srun -n1 --cpus-per-task=<cores> --nodes=1``;
- across nodes: ``--nodes=<n> --ntasks=<n> --cpus-per-task=<cores_per_node>``, one task per
  node, and no ``srun -n1`` around the cell: the ``mpi`` resource tells the jobstep that the
  command starts its own job steps (the cell starts each further node's worker with srun), and
  ``srun -n1`` would confine it to one task on the first node. ``nodes``, ``tasks`` and ``mpi``
  are unset (None) on one node, so one-node cells get exactly the options they always had.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Tuple

# Slurm sends SIGUSR1 120 s before the walltime: a BigDL cell traps it and tears its Spark
# cluster down, a PyTorch cell releases its CPUs, and both exit with a FAILED line. The small
# jobs do not ask for it (it would only end them 120 s early).
WALLTIME_WARNING = "--signal=USR1@120"

# Data preparation, tables and plots: minutes, MB (``--set-resources <rule>:runtime=...``).
SMALL_JOB = {"runtime": 30, "mem_mb": 4000}

# Start-up minutes of a cell, and a pessimistic training speed (records/s per core).
CELL_STARTUP_MIN = 15
RECORDS_PER_S_PER_CORE = 20
# BigDL cell: driver + executor + master + worker JVMs, plus the cached subset (MB per record).
BIGDL_BASE_MB = 6000
BIGDL_MB_PER_RECORD = 0.1
TORCH_MB = 4000


def nodes_needed(cores: int, cores_per_node: int) -> int:
    """Nodes a cell of ``cores`` spans: one, unless it asks for more cores than a node has."""
    return max(1, -(-int(cores) // int(cores_per_node)))


def cpus_per_node(cores: int, cores_per_node: int) -> int:
    """CPUs the cell asks for on each of its nodes (all its cores on one node)."""
    return min(int(cores), int(cores_per_node))


def cell_mem_mb(backend: str, size: int, attempt: int = 1) -> int:
    """Memory of a cell's job, doubled on each retry."""
    if backend == "torch":
        return TORCH_MB * attempt
    return int((BIGDL_BASE_MB + BIGDL_MB_PER_RECORD * int(size)) * attempt)


def cell_runtime(size: int, cores: int, epochs: int, cores_per_node: int, attempt: int = 1) -> int:
    """Minutes: start-up, plus the training at a pessimistic speed; doubled on each retry."""
    per_node = cpus_per_node(cores, cores_per_node)
    train_minutes = epochs * int(size) / (RECORDS_PER_S_PER_CORE * per_node) / 60
    return int((CELL_STARTUP_MIN + train_minutes) * 2 ** (attempt - 1))


@dataclass(frozen=True)
class CellResources:
    """The resources of the cell rules, as Snakemake resource callables of one configuration."""

    cores_per_node: int
    epochs: int
    exclusive: bool
    # () -> {(backend, scaling, size, cores): minutes of the first attempt}, from the plan
    # (dlscale.plan.planned_runtimes); called when a cell's runtime is asked for, not when the
    # workflow is parsed (the plan reads every measured cell). A cell it lacks gets the
    # pessimistic cell_runtime.
    planned_runtime_min: Callable[[], Mapping[Tuple[str, str, int, int], int]] = field(default=dict, compare=False)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any],
        planned_runtime_min: Optional[Callable[[], Mapping[Tuple[str, str, int, int], int]]] = None,
    ) -> "CellResources":
        return cls(
            cores_per_node=int(config["slurm"]["cores_per_node"]),
            epochs=int(config["training"]["epochs"]),
            exclusive=bool(config["measurement"]["exclusive"]),
            planned_runtime_min=planned_runtime_min or dict,
        )

    @property
    def timed_cell(self) -> int:
        """measurement.exclusive: every timed cell holds the one ``timed_cell`` the profiles
        allow (so locally cells run one at a time); 0 lets them run side by side."""
        return 1 if self.exclusive else 0

    @property
    def slurm_extra(self) -> str:
        """sbatch options of every cell: the walltime warning, and whole nodes when exclusive."""
        return WALLTIME_WARNING + (" --exclusive" if self.exclusive else "")

    def nodes_of(self, wildcards: Any) -> int:
        return nodes_needed(wildcards.cores, self.cores_per_node)

    # --- Snakemake resource callables (wildcards, attempt) ---------------------------------------
    def cpus_per_task(self, wildcards: Any) -> int:
        return cpus_per_node(wildcards.cores, self.cores_per_node)

    def nodes(self, wildcards: Any) -> Optional[int]:
        """``--nodes``: set only for a cell across nodes (None leaves the resource unset)."""
        nodes = self.nodes_of(wildcards)
        return nodes if nodes > 1 else None

    def tasks(self, wildcards: Any) -> Optional[int]:
        """One task per node across nodes (the executor requires tasks > 1 with ``mpi``)."""
        return self.nodes(wildcards)

    def mpi(self, wildcards: Any) -> Optional[str]:
        """Across nodes: keeps the jobstep from wrapping the cell in ``srun -n1``."""
        return "srun" if self.nodes_of(wildcards) > 1 else None

    def bigdl_mem_mb(self, wildcards: Any, attempt: int) -> int:
        return cell_mem_mb("bigdl", wildcards.size, attempt)

    def torch_mem_mb(self, wildcards: Any, attempt: int) -> int:
        return cell_mem_mb("torch", wildcards.size, attempt)

    def runtime(self, wildcards: Any, attempt: int) -> int:
        """The pessimistic request, for a cell the plan has no estimate of."""
        return cell_runtime(wildcards.size, wildcards.cores, self.epochs, self.cores_per_node, attempt)

    def planned_runtime(self, backend: str, wildcards: Any, attempt: int) -> int:
        """The plan's request (its estimate x a safety factor), doubled on each retry."""
        key = (backend, str(wildcards.scaling), int(wildcards.size), int(wildcards.cores))
        planned = self.planned_runtime_min()
        if key not in planned:
            return self.runtime(wildcards, attempt)
        return int(planned[key] * 2 ** (attempt - 1))

    def bigdl_runtime(self, wildcards: Any, attempt: int) -> int:
        return self.planned_runtime("bigdl", wildcards, attempt)

    def torch_runtime(self, wildcards: Any, attempt: int) -> int:
        return self.planned_runtime("torch", wildcards, attempt)


def default_slurm_extra_warning(default_resources: Optional[Mapping[str, Any]]) -> Optional[str]:
    """A slurm_extra in default-resources is replaced by the cell rules' own (the walltime
    warning): the warning that says so, or None."""
    if not default_resources or "slurm_extra" not in default_resources:
        return None
    return (
        "slurm_extra in --default-resources (or the profile's default-resources) is replaced in "
        f"the cells by their own ({WALLTIME_WARNING!r}). For more sbatch options use "
        "--dlscale-slurm-qos / --dlscale-slurm-reservation, or "
        f"--set-resources train_cell:slurm_extra=\"'{WALLTIME_WARNING} <options>'\"."
    )
