"""Turn the ``metrics.json`` of finished cells into the study's tables.

Tables have the shape of the published ones (``seed_*.csv`` in workflow/resources/published): one row per
training-set size, one ``cores_N`` column per core count.

Definitions (also written into every Markdown table):

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
  apart, see tests/unit/test_aggregate.py).

Values keep full precision in the functions; rounding to two decimals happens only when a
file is written.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import numpy as np
import pandas as pd
import yaml

from dlscale import paths
from dlscale.grid import CELL_KEYS, GROUP_KEYS, Cell, Grid, as_str_tuple, existing_metrics, missing_cells, select_grid_cells

log = logging.getLogger(__name__)

AVERAGE = "average"
STATS = ("mean", "std", "count")
MISSING = "missing"  # how a missing value reads in the Markdown tables
DECIMALS_FORMAT = "%.2f"  # as published

CELLS_CSV = "cells.csv"
MISSING_CSV = "missing_cells.csv"
REFERENCE_RUNTIME_CSV = "seed_runtime_seconds.csv"
REFERENCE_SPEEDUP_CSV = "seed_speedup.csv"

# src/dlscale/aggregate.py -> repository root
DEFAULT_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "metrics.schema.yaml"

SETTINGS_SUFFIX = ".settings.json"
RERUN_FIX = "Fix: delete this cell's directory ({cell_dir}) and rerun the workflow to train it again."


class AggregationError(Exception):
    """Base of the errors a user can act on; the message says what to do."""


class MetricsError(AggregationError):
    """One or more metrics.json files are unreadable, invalid or misplaced."""


class MissingCellsError(AggregationError):
    """Cells of the expected grid have no metrics.json and partial tables were not allowed."""



# --------------------------------------------------------------------------- loading


@lru_cache(maxsize=4)
def _validator(schema_path: str) -> jsonschema.protocols.Validator:
    try:
        schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    except OSError as err:
        raise AggregationError(
            f"Cannot read the metrics schema {schema_path}: {err}. "
            "Fix: pass schema_path= (the repository's workflow/schemas/metrics.schema.yaml)."
        ) from err
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _reject_non_finite(constant: str) -> float:
    # json accepts NaN/Infinity, and NaN slips through the schema's minimum checks
    raise ValueError(f"non-finite number {constant} is not valid JSON")


def _read_metrics(path: Path, validator: jsonschema.protocols.Validator) -> tuple[dict[str, Any] | None, str | None]:
    """The parsed document, or None and what is wrong with it."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_non_finite)
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"
    except ValueError as err:  # JSONDecodeError is a ValueError
        return None, f"is not valid JSON ({err})"
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        reasons = "; ".join(f"{_json_pointer(e)}: {e.message}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        return None, f"does not match the metrics schema: {reasons}{more}"
    misplaced = _placement_problem(path, doc)
    return (None, misplaced) if misplaced else (doc, None)


def _json_pointer(error: jsonschema.ValidationError) -> str:
    return "/" + "/".join(str(p) for p in error.absolute_path) if error.absolute_path else "(top level)"


def _placement_problem(path: Path, doc: dict[str, Any]) -> str | None:
    """A file under results/cells/ must sit in the directory of the cell it describes.

    Tables are keyed on the file's content, so a copied or mislabelled file would silently
    land in the wrong table cell.
    """
    parent = path.parent.as_posix()
    if "results/cells/" not in parent + "/":
        return None
    expected = paths.cell_dir(*(doc[k] for k in CELL_KEYS))
    if parent == expected or parent.endswith("/" + expected):
        return None
    return f"describes the cell {expected} but lives in {parent}"


def load_metrics(metrics_paths: Iterable[str | Path], schema_path: str | Path | None = None) -> pd.DataFrame:
    """One row per cell, validated against the metrics schema.

    ``timings_s.<phase>`` become ``t_<phase>`` columns, ``versions``/``threads`` entries
    become ``version_<key>``/``threads_<key>``; ``hostnames`` and ``cpus_allowed`` are kept
    as comma-separated strings (plus ``n_cpus_allowed``); ``metrics_path`` names the file.
    Every bad file is reported in one :class:`MetricsError`.
    """
    validator = _validator(str(schema_path or DEFAULT_SCHEMA_PATH))
    rows, problems = [], []
    for path in dict.fromkeys(Path(p) for p in metrics_paths):  # dedupe, keep order
        doc, problem = _read_metrics(path, validator)
        if problem:
            problems.append(f"  {path} {problem}.\n    " + RERUN_FIX.format(cell_dir=path.parent))
        else:
            rows.append(flatten_metrics(doc, path))
    if problems:
        raise MetricsError(f"{len(problems)} malformed metrics file(s):\n" + "\n".join(problems))
    cells = pd.DataFrame(rows, columns=None if rows else list(CELL_KEYS))
    _check_unique_cells(cells)
    return _order_columns(cells).sort_values(list(CELL_KEYS), ignore_index=True)


def flatten_metrics(doc: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """One flat row of scalars from one metrics document."""
    row: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "timings_s":
            row.update({f"t_{phase}": float(seconds) for phase, seconds in value.items()})
        elif key in ("versions", "threads") and isinstance(value, dict):
            prefix = "version" if key == "versions" else "threads"
            row.update({f"{prefix}_{k}": _scalar(v) for k, v in value.items()})
        else:
            row[key] = _scalar(value)
    row["n_cpus_allowed"] = len(doc["cpus_allowed"])
    row["metrics_path"] = Path(path).as_posix()
    return row


def _scalar(value: Any) -> Any:
    """A CSV-friendly value: lists of scalars comma-joined (hostnames, cpus_allowed), other
    containers as JSON."""
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ",".join(str(v) for v in value)
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _check_unique_cells(cells: pd.DataFrame) -> None:
    if cells.empty:
        return
    dupes = cells[cells.duplicated(list(CELL_KEYS), keep=False)]
    if not dupes.empty:
        files = "\n".join(f"  {p}" for p in dupes["metrics_path"])
        raise MetricsError(
            f"Several metrics files describe the same cell:\n{files}\n"
            "Fix: keep one file per cell (delete the stray copies) and rerun."
        )


def _order_columns(cells: pd.DataFrame) -> pd.DataFrame:
    first = [*CELL_KEYS, "epochs", "batch_size"]
    timings = [c for c in cells.columns if c.startswith("t_")]
    results = ["records_per_s", "final_loss", "test_accuracy"]
    head = [c for c in (*first, *timings, *results) if c in cells.columns]
    tail = sorted(c for c in cells.columns if c not in head and c != "metrics_path")
    return cells[head + tail + (["metrics_path"] if "metrics_path" in cells.columns else [])]


def read_cells_csv(path: str | Path) -> pd.DataFrame:
    """Read a ``cells.csv`` back with the string columns as strings (``cpus_allowed`` "0")."""
    as_text = {
        "dataset": str,
        "backend": str,
        "scaling": str,
        "hostnames": str,
        "cpus_allowed": str,
        "slurm_job_id": str,
        "metrics_path": str,
    }
    return pd.read_csv(path, dtype=as_text)



def _missing_message(missing: pd.DataFrame, total: int, listing: Path, limit: int = 40) -> str:
    lines = [f"  {p}" for p in missing["path"].head(limit)]
    if len(missing) > limit:
        lines.append(f"  ... and {len(missing) - limit} more (all listed in {listing})")
    return (
        f"{len(missing)} of {total} cells of the grid have no metrics.json:\n"
        + "\n".join(lines)
        + "\nFix: rerun the workflow to train them (it runs only what is missing), or set "
        "`aggregate.allow_partial: true` in the config to make tables with these cells marked "
        f"'{MISSING}' (listed in {MISSING_CSV})."
    )


def aggregate(
    grid: Grid,
    out_dir: str | Path,
    metrics_paths: Iterable[str | Path] | None = None,
    *,
    workdir: str | Path = ".",
    allow_partial: bool = False,
    schema_path: str | Path | None = None,
) -> list[Path]:
    """Load the cells, check the grid is complete (or allowed partial), write every table.

    ``metrics_paths`` is the explicit list of metrics files (a Snakemake rule's input); when
    None, the grid's cells that exist under ``workdir`` are found via ``paths.cell_dir``.
    Missing cells are always judged against the grid. ``missing_cells.csv`` is written in
    every case (header only when nothing is missing), before a :class:`MissingCellsError`.
    Returns the written paths.
    """
    out_dir = Path(out_dir)
    if metrics_paths is not None:  # the rule's settings stamp (workflow/rules/common.smk) is no cell
        metrics_paths = [p for p in metrics_paths if not str(p).endswith(SETTINGS_SUFFIX)]
    if metrics_paths is None:
        metrics_paths = existing_metrics(grid, workdir)
    cells = select_grid_cells(load_metrics(metrics_paths, schema_path), grid)
    missing = missing_cells(grid, cells)
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = out_dir / MISSING_CSV
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
    return write_tables(cells, out_dir, grid.dataset, grid=grid, missing=missing)


# --------------------------------------------------------------------------- tables


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


# --------------------------------------------------------------------------- reference


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


# --------------------------------------------------------------------------- writing


def table_filenames(backends: Iterable[str], scaling_modes: Iterable[str]) -> list[str]:
    """Every file ``aggregate`` writes, relative to ``paths.tables_dir`` (for rule outputs)."""
    names = [CELLS_CSV, MISSING_CSV]
    for backend in as_str_tuple(backends):
        for scaling in as_str_tuple(scaling_modes):
            for phase in paths.PHASES:
                for kind in paths.TABLE_KINDS:
                    stem = paths.table_stem(kind, phase, backend, scaling)
                    names += [f"{stem}.csv", f"{stem}.md"]
                    if kind == "runtime":
                        names.append(f"{stem}_std.csv")
    return names


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


def _write_csv(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, float_format=DECIMALS_FORMAT, na_rep="", index_label="size")
    return path


def _cores_header(n: int) -> str:
    return f"{n} core" if n == 1 else f"{n} cores"


def _markdown(heading: str, notes: Sequence[str], cells: pd.DataFrame) -> str:
    """Heading line, notes, then a right-aligned Markdown table of preformatted strings."""
    header = ["size", *(_cores_header(n) for n in core_counts(cells))]
    lines = [f"### {heading}", "", *notes, *([""] if notes else [])]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" for _ in header) + "|")
    for size, row in cells.iterrows():
        label = f"{size:,}" if isinstance(size, (int, np.integer)) else f"**{size}**"
        lines.append("| " + " | ".join([label, *row]) + " |")
    return "\n".join(lines) + "\n"


def _format_number(value: float) -> str:
    return MISSING if pd.isna(value) else f"{value:.2f}"


def _runtime_cell(mean: float, std: float, count: float, planned: int) -> str:
    if count == 0 or pd.isna(mean):
        return MISSING
    text = f"{mean:.2f}"
    if count > 1:
        text += f" ± {std:.2f}"
    if count < planned:
        text += f" ({int(count)} of {planned} reps)"
    return text


@dataclass(frozen=True)
class TableContext:
    """What a Markdown heading names: where the numbers come from and how many runs."""

    dataset: str
    backend: str
    scaling: str
    phase: str
    planned_repetitions: int
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.phase} phase — dataset {self.dataset}, backend {self.backend}, {self.scaling} scaling"

    def repetitions(self) -> str:
        n = self.planned_repetitions
        return f"{n} repetition" if n == 1 else f"{n} repetitions"


def _speedup_definition(base: int) -> str:
    base_text = _cores_header(base)
    why = "" if base == 1 else f"; baseline {base_text} because the grid has no 1-core cell"
    return f"speed-up = T({base_text}) / T(N cores), T = mean runtime{why}."


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


def runtime_markdown(tables: GroupTables, context: TableContext) -> str:
    planned = context.planned_repetitions
    stat = f"mean ± sample std over {context.repetitions()}" if planned > 1 else "one repetition, no spread"
    heading = f"Runtime (s), {context.describe()}; {stat}"
    cells = pd.DataFrame(
        [
            [_runtime_cell(m, s, c, planned) for m, s, c in zip(mrow, srow, crow)]
            for mrow, srow, crow in zip(tables.mean.values, tables.std.values, tables.count.values)
        ],
        index=tables.mean.index,
        columns=tables.mean.columns,
    )
    return _markdown(heading, [f"`{MISSING}`: no finished repetition of the cell.", *context.warnings], cells)


def ratio_markdown(kind: str, table: pd.DataFrame, context: TableContext) -> str:
    """Markdown of a speed-up or efficiency table, with its definition under the heading."""
    base = baseline_cores(table)
    title = "Speed-up" if kind == "speedup" else "Parallel efficiency"
    heading = f"{title} vs {_cores_header(base)}, {context.describe()}; from mean runtimes over {context.repetitions()}"
    definition = [_speedup_definition(base)]
    if kind == "efficiency":
        definition.append(f"efficiency = speed-up / (N / {base}).")
    definition.append(f"`{AVERAGE}`: mean of the size rows, taken before rounding; `{MISSING}`: no data.")
    return _markdown(heading, [" ".join(definition), *context.warnings], table.map(_format_number))


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

    cells_csv = out_dir / CELLS_CSV
    cells.to_csv(cells_csv, index=False)
    missing_csv = out_dir / MISSING_CSV
    missing.to_csv(missing_csv, index=False)
    return written + [cells_csv, missing_csv]


def _most_repetitions(cells: pd.DataFrame) -> int:
    return 0 if cells.empty else int(cells.groupby(list(CELL_KEYS[:5])).size().max())


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
