import glob
import json
import os
import socket
import sys
from pathlib import Path

from snakemake.logging import logger
from snakemake.utils import min_version, validate

min_version("9.0")

# The dlscale package (src/) must be importable by this file, by `script:`s in the driver
# environment and by the cell's `python -m dlscale.cell` in the trainer environment.
SRC_DIR = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC_DIR)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [SRC_DIR, os.getenv("PYTHONPATH")]))
)

from dlscale import paths  # noqa: E402
from dlscale.paths import table_filenames  # noqa: E402
from dlscale.config import ConfigError, check_config  # noqa: E402


def validate_config():
    """The schema, then dlscale.config's cross checks: one ConfigError naming every bad key,
    what is wrong and the fix, before any job starts (Snakemake's own `validate` prints the
    schema instead). `validate` then fills in the defaults."""
    import jsonschema
    import yaml

    schema_file = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    schema = yaml.safe_load(schema_file.read_text())
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(config),
        key=lambda error: [str(part) for part in error.absolute_path],
    )
    if errors:
        raise ConfigError(
            "invalid configuration:\n"
            + "".join(
                f"  - {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}\n"
                for e in errors
            )
            + "Fix: correct these keys in the file given with --configfile (or --config); "
            "config/README.md lists every key with its type, range and default."
        )
    validate(config, workflow.source_path("../schemas/config.schema.yaml"))
    check_config(config)


validate_config()

DATASET = config["dataset"]["name"]
GRID = config["grid"]
PUBLISHED_DIR = str(Path(workflow.basedir) / "workflow" / "resources" / "published")
IDX_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


def check_dataset_dir():
    """dataset.dir must hold the raw files the download step still has to copy: say so now,
    not when the download job fails."""
    folder = config["dataset"].get("dir")
    if not folder:
        return
    raw = paths.raw_dir(DATASET)
    needed = [name for name in IDX_FILES if not os.path.exists(os.path.join(raw, name))]
    absent = [name for name in needed if not os.path.isfile(os.path.join(folder, name))]
    if absent:
        where = (
            "does not exist"
            if not os.path.isdir(folder)
            else "lacks " + ", ".join(absent)
        )
        raise ConfigError(
            f"dataset.dir {folder} {where}: the download step copies the {DATASET} files "
            f"from there. Fix: put the four IDX files ({', '.join(IDX_FILES)}) in that folder, "
            "or set dataset.dir: null to download them."
        )


check_dataset_dir()


# --- what keeps completed work from being redone or blocked -----------------------------------
# The profiles run Snakemake with `rerun-triggers: mtime`: edits to a rule, its params or its
# software environment no longer rerun its jobs (otherwise every completed cell would run
# again). The two pieces below keep what `mtime` alone would lose.


def settings_stamp(path, values):
    """A small JSON file of config values that some rules must follow, rewritten (so newer
    than their outputs) only when the values change; those rules take it as an input."""
    text = json.dumps(values, sort_keys=True, indent=1) + "\n"
    try:
        current = Path(path).read_text()
    except OSError:
        current = None
    if current != text:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        Path(tmp).write_text(text)
        os.replace(tmp, path)
    return path


# In the raw folder: the partition script reads the folder of its inputs.
PARTITION_SETTINGS = settings_stamp(
    f"{paths.raw_dir(DATASET)}/.partition.settings.json",
    dict(partition=config["partition"], test_size=config["training"].get("test_size")),
)
# dlscale.aggregate skips inputs named *.settings.json.
TABLE_SETTINGS = settings_stamp(
    f"results/.settings/{DATASET}-tables.settings.json",
    {key: config[key] for key in ("grid", "backends", "scaling_modes", "aggregate")},
)


def cell_inputs(backend=None):
    """Input function of a cell rule: its data, or nothing once its metrics.json exists, unless
    the cell is forced.

    A completed cell then depends on nothing, so no later change upstream (a grid that grows,
    subsets made again, resources/ deleted) reruns it: it is rewritten only when asked (delete
    its metrics.json, or --forcerun it; README, "Failure handling"). A forced cell (its rule or
    its metrics.json in --forcerun, --forceall, --forcetargets: Snakemake's own sets of forced
    rules and files) keeps its data as inputs, so data deleted since is made again first.
    """

    def forced(metrics):
        dag = workflow.dag  # built before the jobs whose input functions it calls
        if dag is None:
            return False
        return any(str(f) == metrics for f in dag.forcefiles) or any(
            forced_rule.is_producer(metrics) for forced_rule in dag.forcerules
        )

    def inputs(wildcards):
        cell = paths.cell_dir(
            wildcards.dataset,
            backend or wildcards.backend,
            wildcards.scaling,
            wildcards.size,
            wildcards.cores,
            wildcards.rep,
        )
        metrics = f"{cell}/metrics.json"
        if os.path.exists(metrics) and not forced(metrics):
            return {}
        return dict(
            train=paths.subset_dir(wildcards.dataset, int(wildcards.size)),
            test=paths.test_dir(wildcards.dataset),
            # Every subset is prepared before any cell starts, so no untimed job shares a
            # timed cell's CPUs.
            prepared=all_subsets(),
        )

    return inputs


LOCK_OWNER = ".snakemake/dlscale-lock-owner.json"


def process_alive(pid):
    """Whether process `pid` exists (a reused pid reads as alive: the safe side)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, TypeError, ValueError):
        return True
    return True


def record_lock_owner():
    """onstart (the run holds Snakemake's locks by then): who took them."""
    owner = dict(host=socket.gethostname(), pid=os.getpid())
    Path(LOCK_OWNER).write_text(json.dumps(owner))


def remove_stale_locks():
    """Snakemake keeps its locks (.snakemake/locks) when it is SIGKILLed and then refuses to
    run here until `--unlock`. When the run that took them (recorded by record_lock_owner)
    ran on this host and its process is gone, the locks are removed, so that the same command
    simply runs again (`rerun-incomplete` redoes the cells it left unfinished). Locks of a live
    run, of a run on another host, or newer than the record, are left to Snakemake's check.
    """
    locks = glob.glob(".snakemake/locks/*.lock")
    if not locks or not workflow.is_main_process:
        return
    try:
        owner = json.loads(Path(LOCK_OWNER).read_text())
        recorded = os.path.getmtime(LOCK_OWNER)
    except (OSError, ValueError):
        return
    if owner.get("host") != socket.gethostname():
        return
    if process_alive(owner.get("pid")):
        return  # still running
    if any(os.path.getmtime(lock) > recorded for lock in locks):
        return  # taken by a run that has not recorded itself yet
    for lock in locks:
        os.remove(lock)
    logger.warning(
        f"Removed the locks left in .snakemake/locks by Snakemake pid {owner.get('pid')} on "
        "this host, which was killed; cells it left unfinished run again."
    )


remove_stale_locks()


onstart:
    record_lock_owner()


def trainer_python():
    """The trainer environment's interpreter (Python 3.9 with pyspark, BigDL, Java 11)."""
    if config["trainer"].get("python"):
        return config["trainer"]["python"]
    return str(Path(workflow.basedir) / ".venv" / "trainer" / "bin" / "python")


def torch_python():
    """The torch environment's interpreter (the PyTorch peer, backend: torch)."""
    if config["trainer"].get("torch_python"):
        return config["trainer"]["torch_python"]
    return str(Path(workflow.basedir) / ".venv" / "torch" / "bin" / "python")


def all_cells():
    """(backend, scaling, size, cores, repetition) of every cell of the grid."""
    return [
        (backend, scaling, size, cores, rep)
        for backend in config["backends"]
        for scaling in config["scaling_modes"]
        for size in GRID["sizes"]
        for cores in GRID["cores"]
        for rep in range(1, GRID["repetitions"] + 1)
    ]


def cell_metrics(cell):
    return paths.metrics_file(DATASET, *cell)


def existing_or_all_cells(wildcards):
    """Every cell's metrics; with aggregate.allow_partial only those that exist."""
    metrics = [cell_metrics(cell) for cell in all_cells()]
    if config["aggregate"]["allow_partial"]:
        return [path for path in metrics if os.path.exists(path)]
    return metrics


def all_subsets():
    return [paths.subset_dir(DATASET, size) for size in GRID["sizes"]] + [
        paths.test_dir(DATASET)
    ]


def table_files():
    """Every table the aggregate rule writes but cells.csv and missing_cells.csv."""
    names = table_filenames(config["backends"], config["scaling_modes"])
    return [
        f"{paths.tables_dir(DATASET)}/{name}"
        for name in names
        if name not in ("cells.csv", "missing_cells.csv")
    ]


def grid_params():
    """The expected grid, so aggregation and plots can tell missing cells from absent ones."""
    return dict(
        dataset=DATASET,
        sizes=GRID["sizes"],
        cores=GRID["cores"],
        repetitions=GRID["repetitions"],
        backends=config["backends"],
        scaling_modes=config["scaling_modes"],
    )


def figure_files():
    return [f"{paths.figures_dir(DATASET)}/{name}.png" for name in paths.FIGURES]


# --- Slurm resources of a cell (the local executor uses only threads) ------------------------
CORES_PER_NODE = config["slurm"]["cores_per_node"]

# The rules carry these themselves: `--default-resources` on the command line replaces the
# profile's whole default-resources (README, Running on a Slurm cluster), so the profile keeps
# only the partition and the account there, and nothing the study needs can be lost with them.
# Walltime warning of every cell rule: Slurm sends SIGUSR1 120 s before the walltime; a BigDL
# cell traps it and tears its Spark cluster down, a PyTorch cell releases its CPUs, and both
# exit with a FAILED line. The small jobs do not trap it (it would only end them 120 s early).
WALLTIME_WARNING = "--signal=USR1@120"
# measurement.exclusive (default true): every timed cell alone on its node. Locally each cell
# holds the one timed_cell the profiles allow; under Slurm it asks for whole nodes.
EXCLUSIVE = config["measurement"]["exclusive"]
TIMED_CELL = 1 if EXCLUSIVE else 0
CELL_SLURM_EXTRA = WALLTIME_WARNING + (" --exclusive" if EXCLUSIVE else "")
# Data preparation, tables and plots: minutes, MB.
SMALL_JOB_RESOURCES = dict(runtime=30, mem_mb=4000)


def warn_about_default_slurm_extra():
    """A slurm_extra in default-resources is overridden by the cell rules' own (the walltime
    warning): say so rather than drop it silently."""
    defaults = workflow.resource_settings.default_resources or {}
    if workflow.is_main_process and "slurm_extra" in defaults:
        logger.warning(
            "slurm_extra in --default-resources (or the profile's default-resources) is "
            f"replaced in the cells by their own ({WALLTIME_WARNING!r}). For more sbatch "
            "options use --dlscale-slurm-qos / --dlscale-slurm-reservation, or "
            f"--set-resources train_cell:slurm_extra=\"'{WALLTIME_WARNING} <options>'\"."
        )


warn_about_default_slurm_extra()


def cell_nodes(wildcards):
    """Nodes a cell spans: one, unless it asks for more cores than a node has."""
    return max(1, -(-int(wildcards.cores) // CORES_PER_NODE))


def cell_cpus_per_node(wildcards):
    return min(int(wildcards.cores), CORES_PER_NODE)


def cell_mem_mb(wildcards, attempt):
    """Driver + executor + master + worker JVMs, plus the cached subset; more on each retry."""
    return int((6000 + 0.1 * int(wildcards.size)) * attempt)


def cell_runtime(wildcards, attempt):
    """Minutes: start-up, plus a pessimistic 20 records/s per core; doubled on each retry."""
    epochs = config["training"]["epochs"]
    cores = min(int(wildcards.cores), CORES_PER_NODE)
    train_minutes = epochs * int(wildcards.size) / (20 * cores) / 60
    return int((15 + train_minutes) * 2 ** (attempt - 1))


def multinode_cores():
    """Regex of the grid's core counts that need more than one node ('' matches none)."""
    big = [str(c) for c in GRID["cores"] if c > CORES_PER_NODE]
    return "|".join(big) if big else "(?!x)x"


def single_node_cores():
    small = [str(c) for c in GRID["cores"] if c <= CORES_PER_NODE]
    return "|".join(small) if small else "(?!x)x"
