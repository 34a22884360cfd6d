"""Beyond the published tables (issue 12), written by the aggregate rule beside them: the
scaling model of every speed-up curve (dlscale.scaling), the cost in core-hours
(dlscale.cost), and the scheduler's figures of each cell (dlscale.sacct, into cells.csv).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from dlscale import cost, paths, sacct, scaling


def _names(values: Iterable[str] | str) -> list[str]:
    return [values] if isinstance(values, str) else list(values)


def analysis_filenames(backends: Iterable[str] | str, scaling_modes: Iterable[str] | str) -> dict[str, list[str]]:
    """The files ``write_analysis`` writes, relative to ``paths.tables_dir``, by kind (the
    aggregate rule declares each kind as its own report entry)."""
    return {
        "models": scaling.model_filenames(_names(backends), _names(scaling_modes), paths.PHASES),
        "cost": cost.cost_filenames(),
    }


def analysis_files(
    dataset: str, backends: Iterable[str] | str, scaling_modes: Iterable[str] | str, kind: str
) -> list[str]:
    """Paths (under ``paths.tables_dir``) of one kind of ``analysis_filenames``: the rule's outputs."""
    return [f"{paths.tables_dir(dataset)}/{name}" for name in analysis_filenames(backends, scaling_modes)[kind]]


def enrich_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The columns cells.csv gains: ``core_hours`` (cores x t_total) and, for cells that ran
    under Slurm, sacct's figures and CPU efficiency (``sacct.SACCT_COLUMNS``)."""
    if cells.empty:
        return cells
    return sacct.add_scheduler_figures(cost.with_core_hours(cells))


def write_analysis(
    cells: pd.DataFrame,
    out_dir: str | Path,
    dataset: str,
    groups: Sequence[tuple[str, str]],
    *,
    sizes: Sequence[int] | None = None,
    cores: Sequence[int] | None = None,
    reference_dir: str | Path | None = None,
) -> list[Path]:
    """Scaling-model tables for every group and phase, and the cost tables."""
    written = scaling.write_models(
        cells, out_dir, dataset, groups, paths.PHASES, sizes=sizes, cores=cores, reference_dir=reference_dir
    )
    return written + cost.write_cost(cells, out_dir, dataset)
