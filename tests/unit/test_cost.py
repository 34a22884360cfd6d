"""Core-hours per cell and study, the cost of each speed-up, cost- vs time-optimal cores."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from dlscale import cost


def _cells(wall: dict[tuple[int, int], list[float]], **extra) -> pd.DataFrame:
    rows = [
        dict(backend="bigdl", scaling="strong", size=size, cores=cores, repetition=rep, t_total=seconds, **extra)
        for (size, cores), runs in wall.items()
        for rep, seconds in enumerate(runs, start=1)
    ]
    return pd.DataFrame(rows)


# 1000 records: 2 cores 1.5x faster (cost 1.33x), 4 cores 2x faster (cost 2x)
WALL = {(1000, 1): [3600.0, 3600.0], (1000, 2): [2400.0, 2400.0], (1000, 4): [1800.0, 1800.0]}


def test_core_hours_are_allocated_cores_times_the_whole_cells_wall_time() -> None:
    cells = cost.with_core_hours(_cells(WALL))
    assert list(cells["core_hours"]) == [1.0, 1.0, 4 / 3, 4 / 3, 2.0, 2.0]
    totals = cost.study_core_hours(_cells(WALL))
    assert totals["cells"] == 6 and totals["core_hours"] == pytest.approx(2 * (1 + 4 / 3 + 2))
    assert math.isnan(totals["scheduler_core_hours"])


def test_each_speedup_says_what_it_cost() -> None:
    table = cost.cost_table(_cells(WALL))
    assert list(table["summary"]) == [
        "1 core: the baseline",
        "2 cores: 1.50x faster, 1.33x the core-hours",
        "4 cores: 2.00x faster, 2.00x the core-hours",
    ]
    assert list(table["runs"]) == [2, 2, 2]
    assert cost.speedup_summary(2, 0.96, 2.08) == "2 cores: 0.96x as fast, 2.08x the core-hours"


def test_cost_optimal_and_time_optimal_core_counts_differ() -> None:
    optimal = cost.optimal_cores(cost.cost_table(_cells(WALL)))
    row = optimal.iloc[0]
    assert (row["time_optimal_cores"], row["cost_optimal_cores"]) == (4, 1)
    assert row["cost_optimal_core_hours"] == pytest.approx(1.0)


def test_scheduler_core_hours_sit_beside_the_cells_own(tmp_path: Path) -> None:
    cells = _cells(WALL, sacct_core_hours=1.1)
    totals = cost.study_core_hours(cells)
    assert totals["scheduler_core_hours"] == pytest.approx(6.6)
    written = cost.write_cost(cells, tmp_path, "fashion-mnist")
    assert [p.name for p in written] == cost.cost_filenames()
    text = (tmp_path / cost.COST_MD).read_text()
    assert "dataset fashion-mnist" in text and "scheduler, AllocCPUS x Elapsed: 6.6000" in text
    assert "2 cores: 1.50x faster, 1.33x the core-hours" in text
    table = pd.read_csv(tmp_path / cost.COST_CSV)
    assert list(table["scheduler_core_hours_all_runs"]) == pytest.approx([2.2, 2.2, 2.2])


def test_no_cells_still_writes_every_file(tmp_path: Path) -> None:
    written = cost.write_cost(pd.DataFrame(columns=["backend", "scaling", "size", "cores", "t_total"]), tmp_path, "x")
    assert all(p.is_file() for p in written)
    assert "0 cells" in (tmp_path / cost.COST_MD).read_text()
