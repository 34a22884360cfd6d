"""The study's grid: every cell the config asks for, and how found cells compare with it.

A cell is one training run: (dataset, backend, scaling mode, training-set size, cores,
repetition); the grid is the cross product of the config's lists. The workflow, the
aggregation, the plots and bench all enumerate cells through :class:`Grid`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from dlscale import paths

log = logging.getLogger(__name__)

CELL_KEYS = ("dataset", "backend", "scaling", "size", "cores", "repetition")
GROUP_KEYS = ("backend", "scaling")


class Cell(NamedTuple):
    """The coordinates of one cell, in the argument order of ``paths.cell_dir``."""

    dataset: str
    backend: str
    scaling: str
    size: int
    cores: int
    repetition: int

    @property
    def metrics_path(self) -> str:
        """Path relative to the working directory, as the workflow names it."""
        return paths.metrics_file(*self)


@dataclass(frozen=True)
class Grid:
    """The cells the study expects: backends x scaling modes x sizes x cores x repetitions."""

    dataset: str
    backends: tuple[str, ...]
    scaling_modes: tuple[str, ...]
    sizes: tuple[int, ...]
    cores: tuple[int, ...]
    repetitions: tuple[int, ...]

    @classmethod
    def from_params(
        cls,
        dataset: str,
        backends: Iterable[str] | str,
        scaling_modes: Iterable[str] | str,
        sizes: Iterable[int],
        cores: Iterable[int],
        repetitions: int | Iterable[int],
    ) -> Grid:
        """Build from config values; ``repetitions`` is a count (1..n) or a list of numbers."""
        reps = range(1, int(repetitions) + 1) if isinstance(repetitions, int) else repetitions
        return cls(
            dataset=str(dataset),
            backends=as_str_tuple(backends),
            scaling_modes=as_str_tuple(scaling_modes),
            sizes=tuple(sorted({int(s) for s in sizes})),
            cores=tuple(sorted({int(c) for c in cores})),
            repetitions=tuple(sorted({int(r) for r in reps})),
        )

    def groups(self) -> list[tuple[str, str]]:
        return [(b, s) for b in self.backends for s in self.scaling_modes]

    def cells(self) -> list[Cell]:
        return [
            Cell(self.dataset, backend, scaling, size, cores, rep)
            for backend, scaling in self.groups()
            for size in self.sizes
            for cores in self.cores
            for rep in self.repetitions
        ]


def as_str_tuple(values: Iterable[str] | str) -> tuple[str, ...]:
    # a lone string from the config must not be split into characters
    return (values,) if isinstance(values, str) else tuple(str(v) for v in values)


def existing_metrics(grid: Grid, workdir: str | Path = ".") -> list[Path]:
    """The metrics.json files of the grid that exist under ``workdir``."""
    candidates = (Path(workdir) / cell.metrics_path for cell in grid.cells())
    return [p for p in candidates if p.is_file()]


def select_grid_cells(cells: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    """Keep the cells of the grid; cells outside it (an older config) are logged and dropped."""
    if cells.empty:
        return cells
    expected = set(grid.cells())
    inside = [Cell(*key) in expected for key in cells[list(CELL_KEYS)].itertuples(index=False)]
    dropped = cells.loc[[not i for i in inside], "metrics_path"]
    for path in dropped:
        log.warning("ignoring %s: cell outside the configured grid", path)
    return cells[inside].reset_index(drop=True)


def missing_cells(grid: Grid, cells: pd.DataFrame) -> pd.DataFrame:
    """The grid's cells without metrics, with the path their metrics.json should have."""
    found = set() if cells.empty else {Cell(*k) for k in cells[list(CELL_KEYS)].itertuples(index=False)}
    rows = [(*cell, cell.metrics_path) for cell in grid.cells() if cell not in found]
    return pd.DataFrame(rows, columns=[*CELL_KEYS, "path"])
