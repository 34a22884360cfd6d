# Constants and input functions of the rules; the dlscale package (installed in the driver
# environment by `make envs`) decides what they stand for (README, Layout).
import functools
import os
from pathlib import Path

from snakemake.utils import min_version

from dlscale import paths
from dlscale.cell_command import interpreter, shell_template
from dlscale.config import validate_config
from dlscale.datasets import RAW_FILE_NAMES
from dlscale.grid import Grid
from dlscale.paths import table_filenames
from dlscale.plan import plan_for_config, planned_runtimes, record_at_start
from dlscale.resources import SMALL_JOB, CellResources

min_version("9.0")

# The schema (filling in its defaults), then the cross checks: one ConfigError listing every
# problem and the fix, before any job.
validate_config(config, Path(workflow.basedir, "workflow/schemas/config.schema.yaml"))

DATASET = config["dataset"]["name"]
GRID = Grid.from_params(
    DATASET, config["backends"], config["scaling_modes"], **config["grid"]
)
IDX_FILES = list(RAW_FILE_NAMES)
PUBLISHED_DIR = str(Path(workflow.basedir, "workflow/resources/published"))


@functools.cache
def cell_plan():
    """Every cell's expected wall time (python -m dlscale.plan prints it), from the cells
    measured so far: made once, when first needed (a cell's runtime, onstart), not at parse time.
    """
    return plan_for_config(config, ".", PUBLISHED_DIR)


@functools.cache
def planned_cell_runtimes():
    """The plan's Slurm runtime request of each cell, made once (every cell job asks for it)."""
    return planned_runtimes(cell_plan())


# The cells' Slurm requests; the runtime is the plan's estimate.
CELL = CellResources.from_config(config, planned_cell_runtimes)
SMALL_JOB_RESOURCES = SMALL_JOB  # data preparation, tables, plots


onstart:
    # Not at parse time (a dry run writes nothing): the plan of a run that starts, for
    # plan_vs_actual; a cell keeps the estimate it had before it ran.
    record_at_start(cell_plan(), config)


wildcard_constraints:
    scaling="strong|weak",
    size=r"\d+",
    cores=r"\d+",
    rep=r"\d+",


def all_subsets():
    return [paths.subset_dir(DATASET, size) for size in GRID.sizes] + [
        paths.test_dir(DATASET)
    ]


def cell_inputs(backend):
    """Input function of a cell rule: its data, or nothing once its metrics.json exists, unless
    the cell is forced (its rule or metrics.json in --forcerun, --forceall, --forcetargets).

    Why not ancient(): Snakemake reruns a job whose ancient input is made in the same run, so
    completed cells would rerun whenever data is made for another cell (a grown grid: every cell
    waits for every subset; resources/ deleted), and data whose params changed would be remade
    although no cell needs it (tests/unit/test_snakemake_limits.py). A forced cell keeps its
    data as inputs, so data deleted since is made again first.
    """

    def forced(metrics):
        dag = workflow.dag  # built before the jobs whose input functions it calls
        return dag is not None and (
            any(str(f) == metrics for f in dag.forcefiles)
            or any(rule.is_producer(metrics) for rule in dag.forcerules)
        )

    def inputs(wildcards):
        w = wildcards
        metrics = paths.metrics_file(
            w.dataset, backend, w.scaling, w.size, w.cores, w.rep
        )
        if os.path.exists(metrics) and not forced(metrics):
            return {}
        return dict(
            train=paths.subset_dir(wildcards.dataset, wildcards.size),
            test=paths.test_dir(wildcards.dataset),
            # Every subset is made before any cell starts: no untimed job beside a timed cell.
            prepared=all_subsets(),
        )

    return inputs


def existing_or_all_cells(wildcards):
    """Every cell's metrics; with aggregate.allow_partial only those that exist."""
    metrics = [cell.metrics_path for cell in GRID.cells()]
    if config["aggregate"]["allow_partial"]:
        return [path for path in metrics if os.path.exists(path)]
    return metrics


def table_files():
    """Every table the aggregate rule writes but cells.csv and missing_cells.csv."""
    names = table_filenames(config["backends"], config["scaling_modes"])
    skip = ("cells.csv", "missing_cells.csv")
    return [f"{paths.tables_dir(DATASET)}/{n}" for n in names if n not in skip]


def grid_params():
    """The expected grid, so aggregation and plots can tell missing cells from absent ones."""
    return dict(
        dataset=DATASET,
        **config["grid"],  # sizes, cores, repetitions (the schema allows no other key)
        backends=config["backends"],
        scaling_modes=config["scaling_modes"],
    )


def figure_files():
    return [f"{paths.figures_dir(DATASET)}/{name}.png" for name in paths.FIGURES]
