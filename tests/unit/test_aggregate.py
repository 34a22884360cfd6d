"""The aggregate rule's work: the grid's metrics.json -> the folder of tables, complete or partial."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from dlscale import paths
from dlscale.aggregate import MissingCellsError, aggregate
from dlscale.analysis import analysis_filenames
from dlscale.grid import Grid
from dlscale.metrics import read_cells_csv
from dlscale.paths import CELLS_CSV, MISSING_CSV, table_filenames
from dlscale.tables import AVERAGE
from synthetic_cells import DATASET, GRID, OVERHEAD_S, write_grid


def test_complete_grid_writes_every_named_file(tmp_path: Path) -> None:
    write_grid(tmp_path)
    out = tmp_path / paths.tables_dir(DATASET)
    written = aggregate(GRID, out, workdir=tmp_path)
    analysis = [name for names in analysis_filenames(["bigdl"], ["strong"]).values() for name in names]
    assert sorted(p.name for p in written) == sorted(table_filenames(["bigdl"], ["strong"]) + analysis)
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    assert pd.read_csv(out / MISSING_CSV).empty  # header only
    assert list(pd.read_csv(out / MISSING_CSV).columns)[-1] == "path"


def test_written_csvs_are_seed_shaped_with_two_decimals(tmp_path: Path) -> None:
    write_grid(tmp_path)
    aggregate(GRID, tmp_path / "t", workdir=tmp_path)
    lines = (tmp_path / "t" / "speedup_train_bigdl_strong.csv").read_text().splitlines()
    assert lines[0] == "size,cores_1,cores_2,cores_4"
    assert lines[1] == f"100,1.00,2.00,{11 / 4:.2f}"
    assert lines[-1] == f"average,1.00,2.00,{(11 / 4 + 21 / 7.25) / 2:.2f}"
    runtime_lines = (tmp_path / "t" / "runtime_total_bigdl_strong.csv").read_text().splitlines()
    assert runtime_lines[2] == f"200,{21 + OVERHEAD_S:.2f},{10.5 + OVERHEAD_S:.2f},{7.25 + OVERHEAD_S:.2f}"
    std_lines = (tmp_path / "t" / "runtime_total_bigdl_strong_std.csv").read_text().splitlines()
    assert std_lines[1] == f"100,{statistics.stdev([10, 12]):.2f},{statistics.stdev([6, 5]):.2f},0.00"


def test_missing_cells_raise_one_error_listing_paths_and_fix(tmp_path: Path) -> None:
    write_grid(tmp_path, skip={(200, 4, 1), (100, 2, 2)})
    out = tmp_path / "t"
    with pytest.raises(MissingCellsError) as err:
        aggregate(GRID, out, workdir=tmp_path)
    message = str(err.value)
    for size, cores, rep in ((200, 4, 1), (100, 2, 2)):
        assert paths.cell_dir(DATASET, "bigdl", "strong", size, cores, rep) + "/metrics.json" in message
    assert "2 of 12 cells" in message and "rerun the workflow" in message and "aggregate.allow_partial: true" in message
    assert len(pd.read_csv(out / MISSING_CSV)) == 2  # the listing is written even on error
    assert not (out / "runtime_train_bigdl_strong.csv").exists()


def test_partial_grid_marks_missing_cells(tmp_path: Path) -> None:
    # (200, 4) has no repetition at all; (100, 2) has one of two
    write_grid(tmp_path, skip={(200, 4, 1), (200, 4, 2), (100, 2, 2)})
    out = tmp_path / "t"
    aggregate(GRID, out, workdir=tmp_path, allow_partial=True)

    missing = pd.read_csv(out / MISSING_CSV)
    assert sorted(zip(missing["size"], missing["cores"], missing["repetition"])) == [
        (100, 2, 2),
        (200, 4, 1),
        (200, 4, 2),
    ]

    runtime = pd.read_csv(out / "runtime_train_bigdl_strong.csv", index_col="size")
    assert math.isnan(runtime.loc[200, "cores_4"]) and runtime.loc[100, "cores_2"] == 6.0
    speedup = pd.read_csv(out / "speedup_train_bigdl_strong.csv", index_col="size")
    assert math.isnan(speedup.loc["200", "cores_4"]) and math.isnan(speedup.loc[AVERAGE, "cores_4"])
    assert speedup.loc[AVERAGE, "cores_2"] == round((11 / 6 + 21 / 10.5) / 2, 2)

    md = (out / "runtime_train_bigdl_strong.md").read_text()
    assert "| 200 | 21.00 ± 1.41 | 10.50 ± 2.12 | missing |" in md
    assert "6.00 (1 of 2 reps)" in md
    assert "| **average** | 1.00 | " in (out / "speedup_train_bigdl_strong.md").read_text()
    assert "missing |" in (out / "efficiency_total_bigdl_strong.md").read_text()


def test_explicit_input_list_is_checked_against_the_grid(tmp_path: Path) -> None:
    every = write_grid(tmp_path)
    given = [p for p in every if "/c4/" not in p.as_posix()]  # a rule input without the 4-core cells
    with pytest.raises(MissingCellsError, match="4 of 12 cells"):
        aggregate(GRID, tmp_path / "t", given, workdir=tmp_path)


def test_cells_outside_the_grid_are_left_out(tmp_path: Path) -> None:
    every = write_grid(tmp_path)
    smaller = Grid.from_params(DATASET, "bigdl", "strong", [100], [1, 2], 2)
    aggregate(smaller, tmp_path / "t", every, workdir=tmp_path)
    cells = read_cells_csv(tmp_path / "t" / CELLS_CSV)
    assert len(cells) == 4 and set(cells["size"]) == {100}
    assert (tmp_path / "t" / "runtime_train_bigdl_strong.csv").read_text().splitlines()[0] == "size,cores_1,cores_2"
