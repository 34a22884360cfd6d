"""The benchmark's arithmetic: from the cells table of one bench run to its figures and targets.

Works on the cells table of ``dlscale.metrics.load_metrics`` (plus the steady throughput read
from the cells' logs) and is unit-tested on synthetic metrics; nothing here times anything.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dlscale import paths
from dlscale.phases import PHASES
from dlscale.tables import load_reference

OVERHEAD_PHASES = ("cluster_start", "cluster_stop", "data_load")  # issue 5's "fixed overhead"
BREAKDOWN_PHASES = PHASES  # every phase of a cell, in order (dlscale.phases)


@dataclass(frozen=True)
class Targets:
    """The issue's targets, checked on BigDL cells only."""

    efficiency: float = 0.90  # train-phase efficiency at the largest core count
    overhead_s: float = 10.0  # cluster start + stop + data load, mean per cell
    fixed_s: float = 10.0  # issue 13: total - train, mean per cell at the smallest core count
    unaccounted_s: float = 1.0  # issue 13: the phases add up to the total within this, every cell
    records_per_s_per_core: float = 500.0  # at every core count
    wall_over_train: float = 1.3  # study wall time / sum of its train phases (issue 13; issue 5 had 1.2)


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


THROUGHPUT_RE = re.compile(r"Trained ([0-9.]+) records in ([0-9.]+) seconds")


def steady_throughput(log_text: str) -> float:
    """BigDL's own steady-state speed from a cell's log: the records/s of the second half of its
    iterations (DistriOptimizer logs every iteration), i.e. after JIT warm-up and without the
    one-off caching of the training set that the train phase also contains. NaN if none."""
    iterations = [(float(n), float(t)) for n, t in THROUGHPUT_RE.findall(log_text)]
    second_half = iterations[len(iterations) // 2:]
    seconds = sum(t for _, t in second_half)
    return sum(n for n, _ in second_half) / seconds if seconds > 0 else math.nan


def add_steady_throughput(cells: pd.DataFrame, work: Path) -> pd.DataFrame:
    """A ``steady_records_per_s`` column read from the BigDL cells' logs (NaN for others)."""
    values = []
    for row in cells.itertuples(index=False):
        path = work / paths.cell_log_file(row.dataset, row.backend, row.scaling, row.size, row.cores, row.repetition)
        text = path.read_text(errors="replace") if row.backend == "bigdl" and path.is_file() else ""
        values.append(steady_throughput(text))
    return cells.assign(steady_records_per_s=values)


def _cell_load(host_load: Any) -> float:
    """The mean of the 1-minute load averages at a cell's start and end (``host_load``, JSON in
    cells.csv); NaN when the cell did not record it."""
    try:
        loads = json.loads(host_load)["load_avg"] if isinstance(host_load, str) else host_load["load_avg"]
        return sum(loads) / len(loads)
    except (TypeError, ValueError, KeyError, ZeroDivisionError):
        return math.nan


def per_cores(cells: pd.DataFrame) -> dict[int, dict[str, float]]:
    """Means (and spreads) over the repetitions of one (backend, scaling) group, per core count."""
    out: dict[int, dict[str, float]] = {}
    for cores, rows in sorted(cells.groupby("cores"), key=lambda item: int(item[0])):
        cores = int(cores)
        overhead = sum(rows[f"t_{phase}"] for phase in OVERHEAD_PHASES)
        fixed = rows["t_total"] - rows["t_train"]  # everything that is not training (issue 13)
        # cells written before issue 13 lack some phases: their gap is then not meaningful
        known = [rows[f"t_{phase}"] for phase in PHASES if f"t_{phase}" in rows]
        unaccounted = rows["t_total"] - sum(known) if len(known) == len(PHASES) else pd.Series([math.nan])
        records_per_s = rows["size"] * rows["epochs"] / rows["t_train"]
        entry = {
            "repetitions": int(len(rows)),
            "train_s": _mean(rows["t_train"]),
            "train_s_std": _std(rows["t_train"]),
            "total_s": _mean(rows["t_total"]),
            "total_s_std": _std(rows["t_total"]),
            "records_per_s": _mean(records_per_s),
            "records_per_s_per_core": _mean(records_per_s) / cores,
            "overhead_s": _mean(overhead),
            "overhead_s_std": _std(overhead),
            "fixed_s": _mean(fixed),
            "fixed_s_std": _std(fixed),
            "unaccounted_s": _mean(unaccounted),
            "unaccounted_max_s": float(unaccounted.abs().max()),
            "test_accuracy": _mean(rows["test_accuracy"]),
            "cpus_allowed": sorted({str(v) for v in rows["cpus_allowed"]}),
            "oversubscribed": bool((rows["n_cpus_allowed"] < rows["cores"]).any()),
            "steady_records_per_s_per_core": (
                _mean(rows["steady_records_per_s"].dropna()) / cores if "steady_records_per_s" in rows else math.nan
            ),
            "load_avg": _mean(pd.Series([_cell_load(v) for v in rows.get("host_load", pd.Series(dtype=object))],
                                        dtype=float).dropna()),
        }
        for phase in BREAKDOWN_PHASES:
            column = f"t_{phase}"
            entry[f"{phase}_s"] = _mean(rows[column]) if column in rows else math.nan
        out[cores] = entry
    return out


def scaling_figures(by_cores: dict[int, dict[str, float]]) -> dict[str, float]:
    """Speed-up and efficiency of the train phase and of the total, largest vs smallest core count.

    speed-up = T(base) / T(N) of the mean runtimes; efficiency = speed-up / (N / base).
    """
    if len(by_cores) < 2:
        return {}
    base, top = min(by_cores), max(by_cores)
    out = {"base_cores": base, "cores": top}
    for phase in ("train", "total"):
        speedup = by_cores[base][f"{phase}_s"] / by_cores[top][f"{phase}_s"]
        out[f"speedup_{phase}"] = speedup
        out[f"efficiency_{phase}"] = speedup / (top / base)
    return out


def published_figures(size: int, cores: int, reference_dir: str | Path) -> dict[str, Any]:
    """The published runtime/speed-up at ``size`` (the nearest published size) and ``cores``."""
    reference = load_reference(reference_dir)
    if reference is None:
        return {}
    runtime, speedup = reference
    sizes = [int(s) for s in runtime.index]
    nearest = min(sizes, key=lambda s: abs(s - size))
    column = f"cores_{cores}"
    if column not in runtime.columns or "cores_1" not in runtime.columns:
        return {}
    t1, tn = float(runtime.loc[nearest, "cores_1"]), float(runtime.loc[nearest, column])
    best_cores = max(int(c.split("_")[1]) for c in speedup.columns)
    return {
        "size": nearest,
        "cores": cores,
        "runtime_1_s": t1,
        f"runtime_{cores}_s": tn,
        "speedup": float(speedup.loc[nearest, column]),
        "efficiency": float(speedup.loc[nearest, column]) / cores,
        "average_speedup": float(speedup.loc["average", column]),
        "records_per_s_per_core_1": nearest / t1,
        f"records_per_s_per_core_{cores}": nearest / tn / cores,
        "best_speedup": float(speedup.max().max()),
        "best_speedup_at": "%d cores, %d records"
        % (
            int(speedup.drop(index="average").max().idxmax().split("_")[1]),
            int(speedup.drop(index="average").max(axis=1).idxmax()),
        ),
        "best_cores": best_cores,
        "note": "the published table does not say which phase it timed",
    }


def summarize(
    cells: pd.DataFrame,
    walls: dict[str, float] | None = None,
    reference_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Every figure of the benchmark from the cells of one bench run.

    ``walls`` maps a backend to the wall time of the run of its cells (the *study wall time*);
    the ratio to the sum of that backend's train phases (all its cells, all repetitions) tells
    how much of the study is not training. ``reference_dir``: the published tables to set beside
    ours (``paths.PUBLISHED_DIR`` of the repository), None for none.
    """
    walls = walls or {}
    groups = []
    for (backend, scaling), rows in sorted(cells.groupby(["backend", "scaling"])):
        by_cores = per_cores(rows)
        groups.append(
            {
                "backend": backend,
                "scaling": scaling,
                "size": int(rows["size"].iloc[0]),
                "batch_size": {int(c): int(b) for c, b in rows.groupby("cores")["batch_size"].first().items()},
                "cores": {str(c): v for c, v in by_cores.items()},
                "scaling_figures": scaling_figures(by_cores),
                "overhead_s": _mean(sum(rows[f"t_{phase}"] for phase in OVERHEAD_PHASES)),
            }
        )
    studies = {}
    for backend, rows in cells.groupby("backend"):
        sum_train = float(rows["t_train"].sum())
        sum_total = float(rows["t_total"].sum())
        wall = walls.get(backend, math.nan)
        studies[backend] = {
            "cells": int(len(rows)),
            "wall_s": wall,
            "sum_train_s": sum_train,
            "sum_total_s": sum_total,
            "wall_over_train": wall / sum_train if sum_train else math.nan,
            "wall_over_total": wall / sum_total if sum_total else math.nan,
        }
    sizes = sorted({int(s) for s in cells["size"]}) if len(cells) else []
    top = int(cells["cores"].max()) if len(cells) else 1
    published = published_figures(sizes[0], top, reference_dir) if sizes and reference_dir else {}
    return {"groups": groups, "studies": studies, "published": published}


def check_targets(summary: dict[str, Any], targets: Targets = Targets()) -> list[dict[str, Any]]:
    """Each target for each BigDL scaling mode: the value measured, the bound, met or not."""
    results = []

    def add(name: str, scaling: str, value: float, bound: float, higher_is_better: bool, detail: str) -> None:
        met = (value >= bound) if higher_is_better else (value <= bound)
        results.append(
            {
                "target": name,
                "scaling": scaling,
                "value": value,
                "bound": bound,
                "op": ">=" if higher_is_better else "<=",
                "met": bool(met) and not math.isnan(value),
                "detail": detail,
            }
        )

    for group in summary["groups"]:
        if group["backend"] != "bigdl":
            continue
        scaling = group["scaling"]
        figures = group["scaling_figures"]
        if figures:
            add(
                "train-phase efficiency at %d cores" % figures["cores"],
                scaling,
                figures["efficiency_train"],
                targets.efficiency,
                True,
                "speed-up %.2fx" % figures["speedup_train"],
            )
        add("fixed overhead per cell (s)", scaling, group["overhead_s"], targets.overhead_s, False,
            "cluster start + stop + data load, mean over the cells")
        smallest = min(group["cores"], key=int)
        add("fixed cost per cell at %s core(s) (s)" % smallest, scaling, group["cores"][smallest]["fixed_s"],
            targets.fixed_s, False, "total - train, mean over the cells (issue 13)")
        worst_gap = max((v["unaccounted_max_s"] for v in group["cores"].values()), default=math.nan)
        add("time no phase accounts for (s)", scaling, worst_gap, targets.unaccounted_s, False,
            "|total - sum of phases|, worst cell (issue 13)")
        per_core = {int(c): v["records_per_s_per_core"] for c, v in group["cores"].items()}
        worst = min(per_core, key=per_core.get)
        add("records/s per core (worst core count)", scaling, per_core[worst], targets.records_per_s_per_core,
            True, "at %d core(s)" % worst)
    study = summary["studies"].get("bigdl")
    if study:
        add("study wall time / sum of train phases", "all", study["wall_over_train"], targets.wall_over_train,
            False, "%.0f s wall, %.0f s of training" % (study["wall_s"], study["sum_train_s"]))
    return results
