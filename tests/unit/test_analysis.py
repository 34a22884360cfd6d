"""The aggregate rule's analysis files: scaling models, cost, and the enriched cells.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dlscale import paths, plan
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


def test_plan_versus_actual_compares_the_recorded_estimate_with_the_cells(tmp_path: Path) -> None:
    write_grid(tmp_path)
    recorded = pd.DataFrame(
        [dict(backend="bigdl", scaling="strong", size=100, cores=1, repetitions=2, wall_s=7.0, source="fitted (x)",
              mem_mb=6010, core_hours=0.0, slurm_runtime_min=1, planned_at="2026-11-27T05:00:00+00:00")]
    )
    plan_csv = tmp_path / plan.plan_file(DATASET)
    plan_csv.parent.mkdir(parents=True)
    recorded.to_csv(plan_csv, index=False)
    out = tmp_path / "t"
    aggregate(GRID, out, workdir=tmp_path)
    table = pd.read_csv(out / "plan_vs_actual.csv")
    assert len(table) == 1  # only the cells the plan recorded
    row = table.iloc[0]
    assert row["actual_wall_s"] == pytest.approx(11 + OVERHEAD_S)  # mean of 10 + 3 and 12 + 3
    assert row["actual_over_planned"] == pytest.approx((11 + OVERHEAD_S) / 7.0)
    assert bool(row["within_request"]) is True  # 15 s, 1 minute asked
    assert "| bigdl | strong | 100 | 1 | 7.0 | 14.0 | 2.00 | 1 | yes | fitted (x) |" in (out / "plan_vs_actual.md").read_text()


def test_without_a_recorded_plan_the_table_says_so(tmp_path: Path) -> None:
    write_grid(tmp_path)
    aggregate(GRID, tmp_path / "t", workdir=tmp_path)
    assert "No plan was recorded" in (tmp_path / "t" / "plan_vs_actual.md").read_text()
    assert pd.read_csv(tmp_path / "t" / "plan_vs_actual.csv").empty
