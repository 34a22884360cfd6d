"""The aggregate rule's work: the grid's ``metrics.json`` -> the folder of tables.

Finds the cells (``dlscale.metrics``), judges them against the grid (``dlscale.grid``), and
writes every table of ``dlscale.tables`` as CSV (two decimals, as published) and as Markdown
(``dlscale.markdown``), plus ``cells.csv`` and ``missing_cells.csv``; the file names are
``paths.table_filenames``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dlscale import paths
from dlscale.analysis import enrich_cells, write_analysis
from dlscale.plan import plan_file
from dlscale.grid import CELL_KEYS, GROUP_KEYS, Grid, existing_metrics, missing_cells, select_grid_cells
from dlscale.markdown import MISSING, TableContext, ratio_markdown, runtime_markdown
from dlscale.metrics import load_metrics
from dlscale.tables import GroupTables, condition_warnings, group_tables

log = logging.getLogger(__name__)

DECIMALS_FORMAT = "%.2f"  # as published


class MissingCellsError(Exception):
    """Cells of the expected grid have no metrics.json and partial tables were not allowed."""


def _missing_message(missing: pd.DataFrame, total: int, listing: Path, limit: int = 40) -> str:
    lines = [f"  {p}" for p in missing["path"].head(limit)]
    if len(missing) > limit:
        lines.append(f"  ... and {len(missing) - limit} more (all listed in {listing})")
    return (
        f"{len(missing)} of {total} cells of the grid have no metrics.json:\n"
        + "\n".join(lines)
        + "\nFix: rerun the workflow to train them (it runs only what is missing), or set "
        "`aggregate.allow_partial: true` in the config to make tables with these cells marked "
        f"'{MISSING}' (listed in {paths.MISSING_CSV})."
    )


def aggregate(
    grid: Grid,
    out_dir: str | Path,
    metrics_paths: Iterable[str | Path] | None = None,
    *,
    workdir: str | Path = ".",
    allow_partial: bool = False,
    schema_path: str | Path | None = None,
    reference_dir: str | Path | None = None,
) -> list[Path]:
    """Load the cells, check the grid is complete (or allowed partial), write every table,
    and the scaling-model and cost tables (dlscale.analysis; ``reference_dir``: the published
    tables, fitted beside ours).

    ``metrics_paths`` is the explicit list of metrics files (a Snakemake rule's input); when
    None, the grid's cells that exist under ``workdir`` are found via ``paths.cell_dir``.
    Missing cells are always judged against the grid. ``missing_cells.csv`` is written in
    every case (header only when nothing is missing), before a :class:`MissingCellsError`.
    Returns the written paths.
    """
    out_dir = Path(out_dir)
    if metrics_paths is None:
        metrics_paths = existing_metrics(grid, workdir)
    cells = enrich_cells(select_grid_cells(load_metrics(metrics_paths, schema_path), grid))
    missing = missing_cells(grid, cells)
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = out_dir / paths.MISSING_CSV
    missing.to_csv(listing, index=False)
    if not missing.empty:
        if not allow_partial:
            raise MissingCellsError(_missing_message(missing, len(grid.cells()), listing))
        log.warning(
            "partial grid (allow_partial): %d of %d cells missing, marked '%s' in the tables and listed in %s",
            len(missing),
            len(grid.cells()),
            MISSING,
            listing,
        )
    log.info("aggregating %d cells of %s into %s", len(cells), grid.dataset, out_dir)
    written = write_tables(cells, out_dir, grid.dataset, grid=grid, missing=missing)
    return written + write_analysis(
        cells,
        out_dir,
        grid.dataset,
        grid.groups(),
        sizes=grid.sizes,
        cores=grid.cores,
        reference_dir=reference_dir,
        plan_csv=Path(workdir) / plan_file(grid.dataset),
    )


def write_tables(
    cells: pd.DataFrame,
    out_dir: str | Path,
    dataset: str,
    *,
    grid: Grid | None = None,
    missing: pd.DataFrame | None = None,
) -> list[Path]:
    """Write every table of every (backend, scaling) group and phase; return the paths.

    With a ``grid``, every group, size and core count of the grid gets its row/column even
    without data (so the file names are fixed); without one, what ``cells`` holds.
    Also writes ``cells.csv`` (every metric of every cell) and ``missing_cells.csv``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if missing is None:
        missing = missing_cells(grid, cells) if grid else pd.DataFrame(columns=[*CELL_KEYS, "path"])
    groups = grid.groups() if grid else sorted(set(cells[list(GROUP_KEYS)].itertuples(index=False, name=None)))
    planned = len(grid.repetitions) if grid else _most_repetitions(cells)
    sizes, cores = (grid.sizes, grid.cores) if grid else (None, None)

    written = []
    for backend, scaling in groups:
        group_cells = cells[(cells["backend"] == backend) & (cells["scaling"] == scaling)] if len(cells) else cells
        warnings = condition_warnings(group_cells)
        for phase in paths.PHASES:
            context = TableContext(dataset, backend, scaling, phase, planned, warnings)
            written += _write_group(group_tables(group_cells, phase, sizes, cores), out_dir, context)

    cells_csv = out_dir / paths.CELLS_CSV
    cells.to_csv(cells_csv, index=False)
    missing_csv = out_dir / paths.MISSING_CSV
    missing.to_csv(missing_csv, index=False)
    return written + [cells_csv, missing_csv]


def _most_repetitions(cells: pd.DataFrame) -> int:
    return 0 if cells.empty else int(cells.groupby(list(CELL_KEYS[:5])).size().max())


def _write_csv(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, float_format=DECIMALS_FORMAT, na_rep="", index_label="size")
    return path


def _write_group(tables: GroupTables, out_dir: Path, context: TableContext) -> list[Path]:
    written = []
    for kind in paths.TABLE_KINDS:
        stem = paths.table_stem(kind, context.phase, context.backend, context.scaling)
        if kind == "runtime":
            written.append(_write_csv(tables.mean, out_dir / f"{stem}.csv"))
            written.append(_write_csv(tables.std, out_dir / f"{stem}_std.csv"))
            text = runtime_markdown(tables, context)
        else:
            table = tables.speedup if kind == "speedup" else tables.efficiency
            written.append(_write_csv(table, out_dir / f"{stem}.csv"))
            text = ratio_markdown(kind, table, context)
        md = out_dir / f"{stem}.md"
        md.write_text(text, encoding="utf-8")
        written.append(md)
    return written
