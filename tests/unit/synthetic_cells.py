"""Synthetic cells for the aggregation tests: metrics documents of a small grid, written where
the workflow puts them, and the repository's published tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dlscale import paths
from dlscale.grid import Grid
from dlscale.tables import load_reference

REPO_ROOT = Path(__file__).resolve().parents[2]
# the published tables, part of the repository (workflow/resources/published)
REFERENCE_DIR = REPO_ROOT / paths.PUBLISHED_DIR


def published_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The repository's published runtime and speed-up tables; a missing one fails the test."""
    missing = [name for name in ("seed_runtime_seconds.csv", "seed_speedup.csv") if not (REFERENCE_DIR / name).is_file()]
    if missing:
        pytest.fail(f"the published tables {missing} are missing from {REFERENCE_DIR}: they are part of the "
                    "repository (restore them with git checkout)", pytrace=False)
    loaded = load_reference(REFERENCE_DIR)
    assert loaded is not None, f"load_reference({REFERENCE_DIR}) found no tables"
    return loaded


DATASET = "fashion-mnist"
OVERHEAD_S = 3.0  # total = train + this, so the two phases give different tables
# train seconds of each (size, cores): one value per repetition (1, 2)
TRAIN_S = {
    (100, 1): [10.0, 12.0],
    (100, 2): [6.0, 5.0],
    (100, 4): [4.0, 4.0],
    (200, 1): [20.0, 22.0],
    (200, 2): [12.0, 9.0],
    (200, 4): [7.0, 7.5],
}
GRID = Grid.from_params(DATASET, ["bigdl"], ["strong"], [200, 100], [4, 1, 2], 2)


def metrics_doc(
    size: int, cores: int, repetition: int, train: float, *, scaling: str = "strong", dataset: str = DATASET
) -> dict:
    """A metrics document valid per workflow/schemas/metrics.schema.yaml."""
    return {
        "schema_version": 1,
        "dataset": dataset,
        "backend": "bigdl",
        "scaling": scaling,
        "size": size,
        "cores": cores,
        "repetition": repetition,
        "epochs": 2,
        "batch_size": 64,
        "optimizer": "adam",
        "learning_rate": 0.001,
        "seed": 42,
        "hostnames": ["node01"],
        "slurm_job_id": None,
        "cpus_allowed": list(range(cores)),
        "threads": {"OMP_NUM_THREADS": 1},
        "versions": {"python": "3.9.19", "spark": "3.1.3", "bigdl": "2.4.0"},
        "timings_s": {
            "cluster_start": 1.0,
            "data_load": 0.5,
            "train": train,
            "evaluate": 0.5,
            "cluster_stop": 1.0,
            "total": train + OVERHEAD_S,
        },
        "records_per_s": size * 2 / train,
        "final_loss": 0.4,
        "test_accuracy": 0.85,
        "test_records": 10000,
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:01:00Z",
    }


def write_metrics(root: Path, doc: dict) -> Path:
    """Write ``doc`` where the workflow puts it; return the path."""
    keys = ("dataset", "backend", "scaling", "size", "cores", "repetition")
    path = root / paths.cell_dir(*(doc[k] for k in keys)) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def write_grid(root: Path, train_s: dict = TRAIN_S, *, scaling: str = "strong", skip=()) -> list[Path]:
    """The synthetic grid's metrics files, minus the (size, cores, rep) in ``skip``."""
    return [
        write_metrics(root, metrics_doc(size, cores, rep, seconds, scaling=scaling))
        for (size, cores), runs in train_s.items()
        for rep, seconds in enumerate(runs, start=1)
        if (size, cores, rep) not in skip
    ]