"""The grid of cells: built from config values, enumerated in a fixed order, compared with the cells found."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dlscale import paths
from dlscale.grid import CELL_KEYS, Cell, Grid, existing_metrics, missing_cells, select_grid_cells

GRID = Grid.from_params("fashion-mnist", "bigdl", ["strong", "weak"], [200, 100, 100], [2, 1], 2)


def test_from_params_sorts_dedupes_and_keeps_a_lone_string_whole() -> None:
    assert GRID.backends == ("bigdl",) and GRID.scaling_modes == ("strong", "weak")
    assert GRID.sizes == (100, 200) and GRID.cores == (1, 2) and GRID.repetitions == (1, 2)
    assert Grid.from_params("d", "bigdl", "strong", [1], [1], [3, 1]).repetitions == (1, 3)


def test_cells_cover_the_cross_product_in_group_size_cores_repetition_order() -> None:
    cells = GRID.cells()
    assert len(cells) == 2 * 2 * 2 * 2 and len(set(cells)) == len(cells)
    assert GRID.groups() == [("bigdl", "strong"), ("bigdl", "weak")]
    assert cells[:3] == [
        Cell("fashion-mnist", "bigdl", "strong", 100, 1, 1),
        Cell("fashion-mnist", "bigdl", "strong", 100, 1, 2),
        Cell("fashion-mnist", "bigdl", "strong", 100, 2, 1),
    ]
    assert cells[0].metrics_path == paths.metrics_file(*cells[0])


def test_found_cells_are_compared_with_the_grid(tmp_path: Path) -> None:
    inside, outside = GRID.cells()[0], Cell("fashion-mnist", "bigdl", "strong", 999, 1, 1)
    for cell in (inside, outside):
        (tmp_path / cell.metrics_path).parent.mkdir(parents=True)
        (tmp_path / cell.metrics_path).write_text("{}")
    assert existing_metrics(GRID, tmp_path) == [tmp_path / inside.metrics_path]

    found = pd.DataFrame([(*c, c.metrics_path) for c in (inside, outside)], columns=[*CELL_KEYS, "metrics_path"])
    kept = select_grid_cells(found, GRID)
    assert list(kept["metrics_path"]) == [inside.metrics_path]
    missing = missing_cells(GRID, kept)
    assert len(missing) == len(GRID.cells()) - 1 and inside.metrics_path not in set(missing["path"])
