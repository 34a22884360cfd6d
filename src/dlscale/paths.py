"""Where every file of the study lives, relative to the working directory.

One place for the layout, so the Snakemake rules, the cell and the aggregation agree.
"""

from __future__ import annotations

PHASES = ("total", "train")  # the timings that get tables of their own
TABLE_KINDS = ("runtime", "speedup", "efficiency")
FIGURES = ("runtime", "speedup", "efficiency", "published_vs_ours")


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


def table_stem(kind: str, phase: str, backend: str, scaling: str) -> str:
    """e.g. ``speedup_train_bigdl_strong``: one seed-shaped table (rows sizes, columns cores)."""
    return f"{kind}_{phase}_{backend}_{scaling}"


def tables_dir(dataset: str) -> str:
    return f"results/tables/{dataset}"


def figures_dir(dataset: str) -> str:
    return f"results/figures/{dataset}"
