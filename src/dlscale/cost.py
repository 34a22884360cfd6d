"""What the study cost, in core-hours, and what each speed-up cost.

A cell's core-hours are its allocated cores times the wall time of the whole cell
(``timings_s.total``: cluster start, data load, training, evaluation, cluster stop), not
the train phase alone: that is what a cluster bills. Under Slurm, the scheduler's own
figure (``AllocCPUS x Elapsed`` from sacct, see dlscale.sacct) is kept beside it, since a
job also holds its CPUs while its cell starts and stops outside the cell's timers.

For each (backend, scaling, size) the cost table compares every core count with the
baseline (the smallest core count): "2 cores: 1.50x faster, 1.33x the core-hours". The
time-optimal core count is the one with the shortest mean wall time, the cost-optimal one
the one with the fewest mean core-hours per run.

Everything takes plain data: a ``cells.csv``-shaped DataFrame (one row per cell, columns
``backend, scaling, size, cores, repetition, t_total``, optionally the ``sacct_*`` columns).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

SECONDS_PER_HOUR = 3600.0
GROUP = ["backend", "scaling"]
COST_COLUMNS = (
    "backend",
    "scaling",
    "size",
    "cores",
    "runs",
    "wall_s",
    "core_hours_per_run",
    "core_hours_all_runs",
    "speedup",
    "cost_ratio",
    "scheduler_core_hours_all_runs",
    "summary",
)


def with_core_hours(cells: pd.DataFrame) -> pd.DataFrame:
    """``cells`` plus ``core_hours`` = cores x ``t_total`` / 3600 per cell."""
    cells = cells.copy()
    cells["core_hours"] = cells["cores"].astype(float) * cells["t_total"].astype(float) / SECONDS_PER_HOUR
    return cells


def _times(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}x"


def speedup_summary(cores: int, speedup: float, cost_ratio: float) -> str:
    """'2 cores: 1.50x faster, 1.33x the core-hours' (slower: '0.96x as fast')."""
    unit = "core" if cores == 1 else "cores"
    if speedup == 1 and cost_ratio == 1:
        return f"{cores} {unit}: the baseline"
    pace = f"{_times(speedup)} faster" if not math.isnan(speedup) and speedup >= 1 else f"{_times(speedup)} as fast"
    return f"{cores} {unit}: {pace}, {_times(cost_ratio)} the core-hours"


def cost_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (backend, scaling, size, cores): mean wall time, core-hours, and the
    speed-up and core-hour ratio against the group's smallest core count of that size."""
    if cells.empty:
        return pd.DataFrame(columns=list(COST_COLUMNS))
    cells = with_core_hours(cells)
    keys = [*GROUP, "size", "cores"]
    aggregations = dict(
        runs=("t_total", "size"),
        wall_s=("t_total", "mean"),
        core_hours_per_run=("core_hours", "mean"),
        core_hours_all_runs=("core_hours", "sum"),
    )
    if "sacct_core_hours" in cells.columns:
        aggregations["scheduler_core_hours_all_runs"] = ("sacct_core_hours", lambda s: s.sum(min_count=1))
    table = cells.groupby(keys).agg(**aggregations).reset_index()
    if "scheduler_core_hours_all_runs" not in table.columns:
        table["scheduler_core_hours_all_runs"] = math.nan
    base = table.sort_values("cores").groupby([*GROUP, "size"]).first()[["wall_s", "core_hours_per_run"]]
    joined = table.join(base.add_suffix("_base"), on=[*GROUP, "size"])
    table["speedup"] = joined["wall_s_base"] / joined["wall_s"]
    table["cost_ratio"] = joined["core_hours_per_run"] / joined["core_hours_per_run_base"]
    table["summary"] = [speedup_summary(int(c), s, r) for c, s, r in zip(table["cores"], table["speedup"], table["cost_ratio"])]
    return table[list(COST_COLUMNS)].sort_values(keys, ignore_index=True)


def optimal_cores(cost: pd.DataFrame) -> pd.DataFrame:
    """Per (backend, scaling, size): the time-optimal and the cost-optimal core count."""
    rows = []
    for (backend, scaling, size), group in cost.groupby([*GROUP, "size"]):
        fastest = group.loc[group["wall_s"].idxmin()]
        cheapest = group.loc[group["core_hours_per_run"].idxmin()]
        rows.append(
            dict(
                backend=backend,
                scaling=scaling,
                size=int(size),
                time_optimal_cores=int(fastest["cores"]),
                time_optimal_wall_s=float(fastest["wall_s"]),
                time_optimal_core_hours=float(fastest["core_hours_per_run"]),
                cost_optimal_cores=int(cheapest["cores"]),
                cost_optimal_wall_s=float(cheapest["wall_s"]),
                cost_optimal_core_hours=float(cheapest["core_hours_per_run"]),
            )
        )
    return pd.DataFrame(rows)


def study_core_hours(cells: pd.DataFrame) -> dict[str, float]:
    """The whole study's core-hours: the cells' own (cores x t_total) and, where every cell
    has one, the scheduler's (AllocCPUS x Elapsed)."""
    if cells.empty:
        return {"cells": 0, "core_hours": 0.0, "scheduler_core_hours": math.nan}
    own = with_core_hours(cells)["core_hours"].sum()
    scheduler = math.nan
    if "sacct_core_hours" in cells.columns and cells["sacct_core_hours"].notna().all():
        scheduler = float(cells["sacct_core_hours"].sum())
    return {"cells": len(cells), "core_hours": float(own), "scheduler_core_hours": scheduler}


# --------------------------------------------------------------------------- files

COST_CSV = "cost_cells.csv"
OPTIMAL_CSV = "cost_optimal_cores.csv"
COST_MD = "cost.md"


def cost_filenames() -> list[str]:
    """Every file ``write_cost`` writes (for the rule's outputs)."""
    return [COST_CSV, OPTIMAL_CSV, COST_MD]


def _hours(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def cost_markdown(cells: pd.DataFrame, cost: pd.DataFrame, optimal: pd.DataFrame, dataset: str) -> str:
    totals = study_core_hours(cells)
    lines = [
        f"### Cost in core-hours — dataset {dataset}",
        "",
        "core-hours = allocated cores x wall time of the whole cell (`t_total`) / 3600; "
        "speed-up and core-hour ratio against the smallest core count of the same size; "
        "time-optimal: the shortest mean wall time, cost-optimal: the fewest core-hours per run.",
        "",
        f"Whole study: {totals['cells']} cells, {_hours(totals['core_hours'])} core-hours "
        + (
            f"(scheduler, AllocCPUS x Elapsed: {_hours(totals['scheduler_core_hours'])})."
            if not math.isnan(totals["scheduler_core_hours"])
            else "(no scheduler figure: not run under Slurm, or sacct had no record of some cells)."
        ),
        "",
        "| backend | scaling | size | cores | runs | wall s | core-h / run | what it costs |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in cost.itertuples(index=False):
        lines.append(
            f"| {row.backend} | {row.scaling} | {int(row.size):,} | {int(row.cores)} | {int(row.runs)} | "
            f"{row.wall_s:.2f} | {_hours(row.core_hours_per_run)} | {row.summary} |"
        )
    lines += [
        "",
        "| backend | scaling | size | time-optimal cores | wall s | core-h | cost-optimal cores | wall s | core-h |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in optimal.itertuples(index=False):
        lines.append(
            f"| {row.backend} | {row.scaling} | {row.size:,} | {row.time_optimal_cores} | "
            f"{row.time_optimal_wall_s:.2f} | {_hours(row.time_optimal_core_hours)} | {row.cost_optimal_cores} | "
            f"{row.cost_optimal_wall_s:.2f} | {_hours(row.cost_optimal_core_hours)} |"
        )
    return "\n".join(lines) + "\n"


def write_cost(cells: pd.DataFrame, out_dir: str | Path, dataset: str) -> list[Path]:
    """``cost_cells.csv``, ``cost_optimal_cores.csv`` and ``cost.md`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cost = cost_table(cells)
    optimal = optimal_cores(cost) if len(cost) else pd.DataFrame()
    cost.to_csv(out_dir / COST_CSV, index=False, float_format="%.6g")
    optimal.to_csv(out_dir / OPTIMAL_CSV, index=False, float_format="%.6g")
    (out_dir / COST_MD).write_text(cost_markdown(cells, cost, optimal, dataset), encoding="utf-8")
    return [out_dir / name for name in cost_filenames()]

