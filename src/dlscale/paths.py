"""Where every file of the study lives, relative to the working directory.

One place for the layout, so the Snakemake rules, the cell and the aggregation agree.
"""

from __future__ import annotations

from typing import Iterable

PHASES = ("total", "train")  # the timings that get tables of their own
TABLE_KINDS = ("runtime", "speedup", "efficiency")
FIGURES = ("runtime", "speedup", "efficiency", "published_vs_ours")
CELLS_CSV = "cells.csv"  # every metric of every cell, in tables_dir
MISSING_CSV = "missing_cells.csv"  # the grid's cells without metrics, in tables_dir
# Relative to the repository (the workflow's base directory), not to the working directory:
PUBLISHED_DIR = "workflow/resources/published"  # the published seed_*.csv tables


# In every subset and test folder, beside its Parquet parts: the arrays the BigDL executors read
# (dlscale.partition writes them, dlscale.trainer maps them). "_": Spark and pyarrow skip them
# when they read the folder's Parquet parts, as they skip _manifest.json.
SUBSET_ARRAYS = ("_images.npy", "_labels.npy")


def raw_dir(dataset: str) -> str:
    return f"resources/{dataset}/raw"


def subset_dir(dataset: str, size: int) -> str:
    return f"resources/{dataset}/subsets/n{size}"


def test_dir(dataset: str) -> str:
    return f"resources/{dataset}/test"


def cell_dir(dataset: str, backend: str, scaling: str, size: int, cores: int, repetition: int) -> str:
    return f"results/cells/{dataset}/{backend}/{scaling}/n{size}/c{cores}/r{repetition}"


def metrics_file(dataset: str, backend: str, scaling: str, size: int, cores: int, repetition: int) -> str:
    return cell_dir(dataset, backend, scaling, size, cores, repetition) + "/metrics.json"


def cell_log_file(dataset: str, backend: str, scaling: str, size: int, cores: int, repetition: int) -> str:
    """The train_cell rules' log (wildcards pass through: ``cell_log_file("{dataset}", ...)``)."""
    return f"results/logs/cells/{dataset}/{backend}/{scaling}/n{size}/c{cores}/r{repetition}.log"


def table_stem(kind: str, phase: str, backend: str, scaling: str) -> str:
    """e.g. ``speedup_train_bigdl_strong``: one seed-shaped table (rows sizes, columns cores)."""
    return f"{kind}_{phase}_{backend}_{scaling}"


def tables_dir(dataset: str) -> str:
    return f"results/tables/{dataset}"


def figures_dir(dataset: str) -> str:
    return f"results/figures/{dataset}"


def table_filenames(backends: Iterable[str], scaling_modes: Iterable[str]) -> list[str]:
    """Every file the aggregate rule writes, relative to ``tables_dir`` (for rule outputs)."""
    names = [CELLS_CSV, MISSING_CSV]
    for backend in [backends] if isinstance(backends, str) else backends:
        for scaling in [scaling_modes] if isinstance(scaling_modes, str) else scaling_modes:
            for phase in PHASES:
                for kind in TABLE_KINDS:
                    stem = table_stem(kind, phase, backend, scaling)
                    names += [f"{stem}.csv", f"{stem}.md"]
                    if kind == "runtime":
                        names.append(f"{stem}_std.csv")
    return names
