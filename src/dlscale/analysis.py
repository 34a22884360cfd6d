"""Beyond the published tables (issue 12), written by the aggregate rule beside them: the
scaling model of every speed-up curve (dlscale.scaling), the cost in core-hours
(dlscale.cost), the plan versus what the cells took (dlscale.plan), and the scheduler's
figures of each cell (dlscale.sacct, into cells.csv).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from dlscale import cost, paths, plan, sacct, scaling

PLAN_VS_ACTUAL = "plan_vs_actual"


def _names(values: Iterable[str] | str) -> list[str]:
    return [values] if isinstance(values, str) else list(values)


def analysis_filenames(backends: Iterable[str] | str, scaling_modes: Iterable[str] | str) -> dict[str, list[str]]:
    """The files ``write_analysis`` writes, relative to ``paths.tables_dir``, by kind (the
    aggregate rule declares each kind as its own report entry)."""
    return {
        "models": scaling.model_filenames(_names(backends), _names(scaling_modes), paths.PHASES),
        "cost": cost.cost_filenames(),
        "plan": [f"{PLAN_VS_ACTUAL}.csv", f"{PLAN_VS_ACTUAL}.md"],
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
    plan_csv: str | Path | None = None,
) -> list[Path]:
    """Scaling-model tables for every group and phase, the cost tables, and the recorded plan
    (``plan_csv``, when the workflow recorded one) against the cells' wall times."""
    written = scaling.write_models(
        cells, out_dir, dataset, groups, paths.PHASES, sizes=sizes, cores=cores, reference_dir=reference_dir
    )
    written += cost.write_cost(cells, out_dir, dataset)
    return written + write_plan_vs_actual(cells, out_dir, dataset, plan_csv)


def plan_vs_actual(cells: pd.DataFrame, recorded: pd.DataFrame) -> pd.DataFrame:
    """Per cell of the recorded plan that ran: planned and actual mean wall time (``t_total``),
    their ratio, and whether every run fitted in the planned Slurm runtime request."""
    if cells.empty or recorded.empty:
        return pd.DataFrame(columns=[*plan.KEYS, "planned_wall_s", "actual_wall_s", "actual_over_planned",
                                     "runs", "slurm_runtime_min", "within_request", "source", "planned_at"])
    actual = cells.groupby(plan.KEYS).agg(actual_wall_s=("t_total", "mean"), longest_s=("t_total", "max"),
                                          runs=("t_total", "size")).reset_index()
    joined = recorded.rename(columns={"wall_s": "planned_wall_s"}).merge(actual, on=plan.KEYS, how="inner")
    joined["actual_over_planned"] = joined["actual_wall_s"] / joined["planned_wall_s"]
    joined["within_request"] = joined["longest_s"] <= joined["slurm_runtime_min"] * 60
    return joined[[*plan.KEYS, "planned_wall_s", "actual_wall_s", "actual_over_planned", "runs",
                   "slurm_runtime_min", "within_request", "source", "planned_at"]]


def write_plan_vs_actual(cells: pd.DataFrame, out_dir: str | Path, dataset: str, plan_csv: str | Path | None) -> list[Path]:
    out_dir = Path(out_dir)
    recorded = pd.read_csv(plan_csv, dtype={"backend": str, "scaling": str}) if plan_csv and Path(plan_csv).is_file() \
        else pd.DataFrame()
    table = plan_vs_actual(cells, recorded)
    csv, md = out_dir / f"{PLAN_VS_ACTUAL}.csv", out_dir / f"{PLAN_VS_ACTUAL}.md"
    table.to_csv(csv, index=False, float_format="%.6g")
    lines = [f"### Plan versus actual — dataset {dataset}", ""]
    if recorded.empty:
        lines.append(f"No plan was recorded ({plan_csv or plan.plan_file(dataset)} is absent): the workflow records "
                     "one when it starts (`python -m dlscale.plan` prints it).")
    else:
        lines += [
            "planned: the estimate `python -m dlscale.plan` gave each cell before it ran (its source: fitted from "
            "measured cells, or the published table scaled by them); actual: the mean `t_total` of its runs; "
            f"Slurm request: the runtime asked for (at least {plan.SAFETY_FACTOR:g} x the plan, or the pessimistic "
            "default while the plan was unscaled), and whether every run fitted in it.",
            "",
            "| backend | scaling | size | cores | planned s | actual s | actual / planned | Slurm min | fits | source |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for row in table.itertuples(index=False):
            lines.append(f"| {row.backend} | {row.scaling} | {int(row.size):,} | {int(row.cores)} | "
                         f"{row.planned_wall_s:.1f} | {row.actual_wall_s:.1f} | {row.actual_over_planned:.2f} | "
                         f"{int(row.slurm_runtime_min)} | {'yes' if row.within_request else '**no**'} | {row.source} |")
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [csv, md]
