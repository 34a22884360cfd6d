"""The study's tables: runtime, speed-up and efficiency of one (backend, scaling) group and phase.

Tables have the shape of the published ones (``seed_*.csv`` in workflow/resources/published): one row per
training-set size, one ``cores_N`` column per core count.

Definitions (also written into every Markdown table, see ``dlscale.markdown``):

- runtime: mean (and sample standard deviation, ddof=1) over repetitions of a phase's
  wall-clock seconds ``timings_s.<phase>``;
- speed-up: ``T(base) / T(N)`` of the mean runtimes, where ``base`` is the smallest core
  count of the grid (1 when the grid has a 1-core cell). The same for both scaling modes:
  a weak-scaling cell (see ``dlscale.cell.global_batch``) trains the same records as the
  strong one, only with a global batch that grows with the cores;
- efficiency: ``speed-up / (N / base)``;
- ``average`` row: the mean of the size rows of a column, of the *unrounded* values; a
  column with a missing size row has a missing average rather than an average of fewer
  sizes. The published ``average`` row is reproduced to its two decimals by this rule (and,
  for that table, equally by the mean of the rounded values: its digits cannot tell the two
  apart, see tests/unit/test_tables.py).

Values keep full precision here; rounding to two decimals happens only when a file is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dlscale.grid import GROUP_KEYS
from dlscale.paths import CELLS_CSV

AVERAGE = "average"
STATS = ("mean", "std", "count")
REFERENCE_RUNTIME_CSV = "seed_runtime_seconds.csv"
REFERENCE_SPEEDUP_CSV = "seed_speedup.csv"


def core_counts(table: pd.DataFrame) -> list[int]:
    """The N of each ``cores_N`` column, in column order."""
    counts = []
    for column in table.columns:
        match = re.fullmatch(r"cores_(\d+)", str(column))
        if not match:
            raise ValueError(f"unexpected column {column!r}: tables have cores_<N> columns only")
        counts.append(int(match.group(1)))
    return counts


def baseline_cores(table: pd.DataFrame) -> int:
    """The core count speed-ups are relative to: 1 when present, else the smallest."""
    return min(core_counts(table))


def _require_one_group(cells: pd.DataFrame) -> None:
    keys = [k for k in ("dataset", *GROUP_KEYS) if k in cells.columns]
    groups = cells[keys].drop_duplicates() if keys else pd.DataFrame()
    if len(groups) > 1:
        raise ValueError(f"expected the cells of one (dataset, backend, scaling) group, got {len(groups)}")


def runtime_table(
    cells: pd.DataFrame,
    phase: str,
    stat: str = "mean",
    *,
    sizes: Sequence[int] | None = None,
    cores: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Seed-shaped table of ``t_<phase>`` over repetitions: index ``size``, ``cores_N`` columns.

    ``stat`` is ``mean``, ``std`` (sample, ddof=1: NaN with one repetition) or ``count``.
    ``sizes``/``cores`` reindex to the full grid so missing cells appear as NaN (count 0).
    """
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    _require_one_group(cells)
    sizes = _axis_values(sizes, cells, "size")
    cores = _axis_values(cores, cells, "cores")
    if cells.empty:
        table = pd.DataFrame(np.nan, index=sizes, columns=cores)
    else:
        values = cells.groupby(["size", "cores"])[f"t_{phase}"].agg(stat)
        table = values.unstack("cores").reindex(index=sizes, columns=cores)
    if stat == "count":
        table = table.fillna(0)
    table = table.astype(float)
    table.index = pd.Index(sizes, name="size")
    table.columns = [f"cores_{c}" for c in cores]
    return table


def _axis_values(given: Sequence[int] | None, cells: pd.DataFrame, column: str) -> list[int]:
    """The grid's values when given (so missing cells show), else those the cells hold."""
    if given is not None:
        return sorted(int(v) for v in given)
    return [] if cells.empty else sorted(int(v) for v in cells[column].unique())


def _with_average(rows: pd.DataFrame) -> pd.DataFrame:
    """Append the ``average`` row: column means of the unrounded size rows.

    skipna=False: an average over fewer sizes than the other columns would not compare.
    """
    average = rows.mean(axis=0, skipna=False).to_frame(AVERAGE).T
    table = pd.concat([rows, average])
    table.index = pd.Index(list(rows.index) + [AVERAGE], name="size", dtype=object)
    return table


def _size_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(index=AVERAGE, errors="ignore")


def speedup_table(runtime: pd.DataFrame) -> pd.DataFrame:
    """``T(base) / T(N)`` for each size and column, plus the ``average`` row.

    The baseline is the 1-core column, or the smallest core count when the grid has none
    (the columns keep their ``cores_N`` names; ``baseline_cores`` tells which one is 1.0).
    """
    rows = _size_rows(runtime)
    ratio = rows.rdiv(rows[f"cores_{baseline_cores(rows)}"], axis=0)
    return _with_average(ratio)


def efficiency_table(speedup: pd.DataFrame) -> pd.DataFrame:
    """``speed-up / (N / base)`` for each size, plus the ``average`` row."""
    rows = _size_rows(speedup)
    ideal = np.array(core_counts(rows)) / baseline_cores(rows)
    return _with_average(rows / ideal)


@dataclass(frozen=True)
class GroupTables:
    """The tables of one (backend, scaling) group and phase; runtimes in seconds."""

    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.DataFrame
    speedup: pd.DataFrame
    efficiency: pd.DataFrame


def group_tables(
    cells: pd.DataFrame, phase: str, sizes: Sequence[int] | None = None, cores: Sequence[int] | None = None
) -> GroupTables:
    """All tables of one (backend, scaling) group and phase."""
    mean = runtime_table(cells, phase, "mean", sizes=sizes, cores=cores)
    speedup = speedup_table(mean)
    return GroupTables(
        mean=mean,
        std=runtime_table(cells, phase, "std", sizes=sizes, cores=cores),
        count=runtime_table(cells, phase, "count", sizes=sizes, cores=cores),
        speedup=speedup,
        efficiency=efficiency_table(speedup),
    )


# --------------------------------------------------------------------------- conditions


def _core_counts_text(rows: pd.DataFrame) -> str:
    return ", ".join(f"{c} cores" for c in sorted(set(int(c) for c in rows["cores"])))


def _flagged(cells: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows whose boolean ``column`` is true (absent or NaN: not flagged)."""
    if column not in cells.columns:
        return cells.iloc[0:0]
    return cells[cells[column].astype("boolean").fillna(False).astype(bool)]


def condition_warnings(cells: pd.DataFrame) -> tuple[str, ...]:
    """Warnings about cells whose timings do not measure what their column says: fewer CPUs on
    their node than they asked for (``oversubscribed``: time-sharing, not scaling), executors
    that together could use fewer CPUs than the cell's cores (``undersubscribed``), or another
    cell on the same node while they ran (``exclusive`` false: shared caches, memory bandwidth)."""
    if cells.empty:
        return ()
    warnings = []
    if "n_cpus_allowed" in cells.columns:
        per_node = cells["cores_per_node"] if "cores_per_node" in cells.columns else cells["cores"]
        per_node = per_node.fillna(cells["cores"])
        short = cells[cells["n_cpus_allowed"] < per_node]
        if not short.empty:
            warnings.append(f"**Warning:** {len(short)} cell(s) had fewer CPUs than cores ({_core_counts_text(short)}, "
                            f"oversubscribed); see `n_cpus_allowed` in {CELLS_CSV}.")
    under = _flagged(cells, "undersubscribed")
    if not under.empty:
        warnings.append(f"**Warning:** {len(under)} cell(s) ran executors that could use fewer CPUs than the cell's "
                        f"cores ({_core_counts_text(under)}, undersubscribed); see `executors` in {CELLS_CSV}.")
    if "exclusive" in cells.columns:
        shared = cells[~cells["exclusive"].astype("boolean").fillna(True).astype(bool)]
        if not shared.empty:
            warnings.append(f"**Warning:** {len(shared)} cell(s) shared their node with another cell while they ran "
                            f"({_core_counts_text(shared)}, not exclusive); see `overlapping_cells` in {CELLS_CSV}.")
    return tuple(warnings)


# --------------------------------------------------------------------------- published tables


def load_reference(reference_dir: str | Path | None) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The published runtime and speed-up tables, or None when either file is absent."""
    if reference_dir is None:
        return None
    runtime_csv = Path(reference_dir) / REFERENCE_RUNTIME_CSV
    speedup_csv = Path(reference_dir) / REFERENCE_SPEEDUP_CSV
    if not (runtime_csv.is_file() and speedup_csv.is_file()):
        return None
    runtime = pd.read_csv(runtime_csv, index_col="size")
    speedup = pd.read_csv(speedup_csv, index_col="size", dtype={"size": str})
    speedup.index = pd.Index([s if s == AVERAGE else int(s) for s in speedup.index], name="size", dtype=object)
    return runtime.astype(float), speedup.astype(float)
