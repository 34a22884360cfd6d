import os
import sys
from pathlib import Path

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
from dlscale.aggregate import table_filenames  # noqa: E402
from dlscale.config import check_config  # noqa: E402

validate(config, workflow.source_path("../schemas/config.schema.yaml"))
check_config(config)

DATASET = config["dataset"]["name"]
GRID = config["grid"]
PUBLISHED_DIR = str(Path(workflow.basedir) / "workflow" / "resources" / "published")
IDX_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


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
