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
