"""The aggregate rule's analysis files: scaling models, cost, and the enriched cells.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dlscale import paths
from dlscale.aggregate import aggregate
from dlscale.analysis import analysis_filenames
from dlscale.metrics import read_cells_csv
from synthetic_cells import DATASET, GRID, OVERHEAD_S, REFERENCE_DIR, write_grid


def test_aggregate_writes_models_and_cost_and_core_hours_per_cell(tmp_path: Path) -> None:
    write_grid(tmp_path)
    out = tmp_path / paths.tables_dir(DATASET)
    aggregate(GRID, out, workdir=tmp_path, reference_dir=REFERENCE_DIR)
    for names in analysis_filenames("bigdl", "strong").values():
        assert all((out / name).is_file() for name in names)
    cells = read_cells_csv(out / paths.CELLS_CSV)
    expected = cells["cores"] * cells["t_total"] / 3600
    assert list(cells["core_hours"]) == pytest.approx(list(expected))
    assert "cpu_efficiency" not in cells.columns  # no Slurm job: no scheduler columns
    model = (out / "scaling_model_train_bigdl_strong.md").read_text()
    assert "σ ours" in model and "σ published" in model
    cost = pd.read_csv(out / "cost_cells.csv")
    assert set(cost["cores"]) == set(GRID.cores)
    assert cost.loc[(cost["size"] == 100) & (cost["cores"] == 1), "wall_s"].item() == pytest.approx(11 + OVERHEAD_S)


def test_without_the_published_tables_only_ours_are_fitted(tmp_path: Path) -> None:
    write_grid(tmp_path)
    out = tmp_path / "t"
    aggregate(GRID, out, workdir=tmp_path)
    table = pd.read_csv(out / "scaling_model_total_bigdl_strong.csv")
    assert not any(column.startswith("published_") for column in table.columns)
