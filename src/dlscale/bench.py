"""The benchmark: a clean grid of cores x one size x repetitions, and the speed figures as ratios.

``make bench`` (or ``python -m dlscale.bench``, in the driver environment) runs, on this machine:

1. the data preparation of the bench grid (untimed; kept between runs in ``<out>/work/resources``);
2. a *clean* grid: the cells' results of an earlier bench are deleted first, then every cell
   (backends x scaling modes x cores x one size x repetitions) runs through the study's own
   Snakemake workflow, one backend after the other, each backend's run timed as its *study
   wall time*;
3. the study's tables and figures (``<out>/work/results/{tables,figures}``);
4. the benchmark's own figures, measured in this one run: train-phase speed-up and
   efficiency at the largest core count, records/s per core, fixed overhead per cell
   (cluster start + stop + data load), the study wall time against the sum of its train
   phases, the published figures beside them, and the targets met or missed. Written to
   ``<out>/bench.{json,csv,md,png}`` and printed.

The arithmetic (``summarize``, ``check_targets``, ``format_report``) works on the cells table
of ``dlscale.aggregate.load_metrics`` and is unit-tested on synthetic metrics; no test times
anything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from dlscale import paths
from dlscale.grid import Grid
from dlscale.metrics import load_metrics
from dlscale.tables import load_reference

log = logging.getLogger("dlscale.bench")

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED_DIR = ROOT / "workflow" / "resources" / "published"
OVERHEAD_PHASES = ("cluster_start", "cluster_stop", "data_load")
BREAKDOWN_PHASES = ("cluster_start", "context_start", "data_load", "train", "evaluate", "cluster_stop")


@dataclass(frozen=True)
class Targets:
    """The issue's targets, checked on BigDL cells only."""

    efficiency: float = 0.90  # train-phase efficiency at the largest core count
    overhead_s: float = 10.0  # cluster start + stop + data load, mean per cell
    records_per_s_per_core: float = 500.0  # at every core count
    wall_over_train: float = 1.2  # study wall time / sum of its train phases


# --------------------------------------------------------------------------- arithmetic


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


def cell_log(work: Path, cell: Any) -> Path:
    """Where the train_cell rules write a cell's log (workflow/rules/cells.smk)."""
    return work / ("results/logs/cells/%s/%s/%s/n%d/c%d/r%d.log" % tuple(cell))


def add_steady_throughput(cells: pd.DataFrame, work: Path) -> pd.DataFrame:
    """A ``steady_records_per_s`` column read from the BigDL cells' logs (NaN for others)."""
    values = []
    for row in cells.itertuples(index=False):
        path = cell_log(work, (row.dataset, row.backend, row.scaling, row.size, row.cores, row.repetition))
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


def published_figures(size: int, cores: int, reference_dir: str | Path = PUBLISHED_DIR) -> dict[str, Any]:
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
    reference_dir: str | Path | None = PUBLISHED_DIR,
) -> dict[str, Any]:
    """Every figure of the benchmark from the cells of one bench run.

    ``walls`` maps a backend to the wall time of the run of its cells (the *study wall time*);
    the ratio to the sum of that backend's train phases (all its cells, all repetitions) tells
    how much of the study is not training.
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
        per_core = {int(c): v["records_per_s_per_core"] for c, v in group["cores"].items()}
        worst = min(per_core, key=per_core.get)
        add("records/s per core (worst core count)", scaling, per_core[worst], targets.records_per_s_per_core,
            True, "at %d core(s)" % worst)
    study = summary["studies"].get("bigdl")
    if study:
        add("study wall time / sum of train phases", "all", study["wall_over_train"], targets.wall_over_train,
            False, "%.0f s wall, %.0f s of training" % (study["wall_s"], study["sum_train_s"]))
    return results


def _fmt(value: float, spec: str = ".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_report(summary: dict[str, Any], targets: list[dict[str, Any]], context: dict[str, Any]) -> str:
    """The printed report (also written as bench.md)."""
    lines = [
        "# dlscale benchmark",
        "",
        "dataset %s, size %s, cores %s, %s repetition(s), %s epoch(s); host %s (%s CPUs usable); %s"
        % (
            context.get("dataset"),
            context.get("size"),
            context.get("cores"),
            context.get("repetitions"),
            context.get("epochs"),
            context.get("host"),
            context.get("cpus_usable"),
            context.get("finished_at", ""),
        ),
    ]
    if context.get("load_before"):
        lines.append("load average before the run: %s; after: %s" % (context["load_before"], context.get("load_after")))
    for backend, q in (context.get("quiet_wait") or {}).items():
        lines.append("%s cells started %s (1-min load %.2f, threshold %.2f, waited %.0f s)"
                     % (backend, "on a quiet machine" if q["quiet"] else "on a BUSY machine", q["load"],
                        q["threshold"], q["waited_s"]))
    lines += [
        "",
        "## Per cell (means over repetitions; ± sample std)",
        "",
        "records/s: train records / train phase (the published definition: it includes BigDL's one-off",
        "caching of the training set and the JIT warm-up); steady records/s: BigDL's own per-iteration",
        "figures, second half of the iterations (from the cell's log). load avg: the machine's 1-minute",
        "load average around the cells (2 CPUs here): above the cell's own core count, other work shared",
        "the machine and the timings are pessimistic.",
        "",
        "| backend | scaling | cores | batch | train s | records/s | records/s per core | steady records/s "
        "per core | overhead s (start+stop+load) | total s | accuracy | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group in summary["groups"]:
        for cores, v in group["cores"].items():
            lines.append(
                "| %s | %s | %s | %s | %s ± %s | %s | %s | %s | %s ± %s | %s ± %s | %s | %s |"
                % (
                    group["backend"],
                    group["scaling"],
                    cores,
                    group["batch_size"].get(int(cores), ""),
                    _fmt(v["train_s"], ".1f"),
                    _fmt(v["train_s_std"], ".1f"),
                    _fmt(v["records_per_s"], ".0f"),
                    _fmt(v["records_per_s_per_core"], ".0f"),
                    _fmt(v.get("steady_records_per_s_per_core", math.nan), ".0f"),
                    _fmt(v["overhead_s"], ".1f"),
                    _fmt(v["overhead_s_std"], ".1f"),
                    _fmt(v["total_s"], ".1f"),
                    _fmt(v["total_s_std"], ".1f"),
                    _fmt(v["test_accuracy"], ".3f"),
                    _fmt(v.get("load_avg", math.nan), ".1f"),
                )
            )
    lines += [
        "",
        "## Where a cell's time goes (means, s)",
        "",
        "| backend | scaling | cores | " + " | ".join(BREAKDOWN_PHASES) + " |",
        "|---|---|---:|" + "---:|" * len(BREAKDOWN_PHASES),
    ]
    for group in summary["groups"]:
        for cores, v in group["cores"].items():
            lines.append(
                "| %s | %s | %s | " % (group["backend"], group["scaling"], cores)
                + " | ".join(_fmt(v[f"{p}_s"], ".1f") for p in BREAKDOWN_PHASES)
                + " |"
            )
    published = summary.get("published") or {}
    lines += ["", "## Scaling (train phase and total), measured in this run", ""]
    lines.append("| backend | scaling | speed-up train | efficiency train | speed-up total | efficiency total |")
    lines.append("|---|---|---:|---:|---:|---:|")
    for group in summary["groups"]:
        f = group["scaling_figures"]
        if not f:
            continue
        lines.append(
            "| %s | %s | %sx (%d vs %d cores) | %s %% | %sx | %s %% |"
            % (
                group["backend"],
                group["scaling"],
                _fmt(f["speedup_train"]),
                f["cores"],
                f["base_cores"],
                _fmt(100 * f["efficiency_train"], ".0f"),
                _fmt(f["speedup_total"]),
                _fmt(100 * f["efficiency_total"], ".0f"),
            )
        )
    if published:
        cores = published["cores"]
        lines.append(
            "| published BigDL (Xeon, MNIST), %d records | strong | %sx | %s %% | | |"
            % (published["size"], _fmt(published["speedup"]), _fmt(100 * published["efficiency"], ".0f"))
        )
        lines += [
            "",
            "Published, beside them: %d records took %.2f s on 1 core and %.2f s on %d cores "
            "(%.0f and %.0f records/s per core); the published average speed-up at %d cores is %.2fx, "
            "its best %.2fx (%s). %s."
            % (
                published["size"],
                published["runtime_1_s"],
                published[f"runtime_{cores}_s"],
                cores,
                published["records_per_s_per_core_1"],
                published[f"records_per_s_per_core_{cores}"],
                cores,
                published["average_speedup"],
                published["best_speedup"],
                published["best_speedup_at"],
                published["note"].capitalize(),
            ),
        ]
    lines += ["", "## Study wall time against the sum of its train phases", ""]
    lines.append("| backend | cells | wall s | sum of train s | wall / train | sum of totals s | wall / totals |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for backend, s in summary["studies"].items():
        lines.append(
            "| %s | %d | %s | %s | %s | %s | %s |"
            % (
                backend,
                s["cells"],
                _fmt(s["wall_s"], ".0f"),
                _fmt(s["sum_train_s"], ".0f"),
                _fmt(s["wall_over_train"]),
                _fmt(s["sum_total_s"], ".0f"),
                _fmt(s["wall_over_total"]),
            )
        )
    lines += ["", "## Targets (BigDL)", ""]
    for t in targets:
        lines.append(
            "- [%s] %s (%s): %s %s %s — %s"
            % (
                "met" if t["met"] else "MISSED",
                t["target"],
                t["scaling"],
                _fmt(t["value"]),
                t["op"],
                _fmt(t["bound"]),
                t["detail"],
            )
        )
    met = sum(t["met"] for t in targets)
    lines += ["", "%d of %d targets met." % (met, len(targets))]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures


def bench_figure(summary: dict[str, Any], out: Path) -> Path:
    """Three panels: train-phase speed-up (with ideal and published), records/s per core, time per cell."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 4.8), dpi=110)
    ax_speed, ax_rate, ax_time = fig.subplots(1, 3)
    labels, rates, colors = [], [], []
    palette = {"bigdl": "tab:blue", "torch": "tab:orange"}
    max_cores = 1
    for group in summary["groups"]:
        cores = sorted(int(c) for c in group["cores"])
        max_cores = max(max_cores, max(cores))
        base = group["cores"][str(cores[0])]["train_s"]
        speedups = [base / group["cores"][str(c)]["train_s"] for c in cores]
        style = "-" if group["scaling"] == "strong" else "--"
        ax_speed.plot(cores, speedups, style, marker="o", color=palette.get(group["backend"], "k"),
                      label="%s, %s scaling" % (group["backend"], group["scaling"]))
        for c in cores:
            labels.append("%s\n%s\n%d c" % (group["backend"], group["scaling"], c))
            rates.append(group["cores"][str(c)]["records_per_s_per_core"])
            colors.append(palette.get(group["backend"], "k"))
    ideal = list(range(1, max_cores + 1))
    ax_speed.plot(ideal, ideal, ":", color="0.5", label="ideal")
    published = summary.get("published") or {}
    if published:
        ax_speed.plot([1, published["cores"]], [1, published["speedup"]], "s-", color="0.3",
                      label="published BigDL, %d records" % published["size"])
    ax_speed.set_xlabel("cores")
    ax_speed.set_ylabel("train-phase speed-up")
    ax_speed.set_title("Speed-up (this run)")
    ax_speed.legend(fontsize="small")
    ax_speed.grid(alpha=0.3)

    ax_rate.bar(range(len(rates)), rates, color=colors)
    ax_rate.set_xticks(range(len(rates)), labels, fontsize="x-small")
    ax_rate.set_yscale("log")
    ax_rate.axhline(Targets().records_per_s_per_core, color="red", ls=":", label="target (BigDL) 500")
    if published:
        ax_rate.axhline(published["records_per_s_per_core_1"], color="0.3", ls="--",
                        label="published, 1 core (%.0f)" % published["records_per_s_per_core_1"])
    ax_rate.set_ylabel("train records/s per core (log)")
    ax_rate.set_title("Throughput per core")
    ax_rate.legend(fontsize="small")

    bottoms = [0.0] * len(labels)
    phase_colors = dict(zip(BREAKDOWN_PHASES, ["#8da0cb", "#e78ac3", "#a6d854", "#66c2a5", "#ffd92f", "#fc8d62"]))
    for phase in BREAKDOWN_PHASES:
        heights = []
        for group in summary["groups"]:
            for c in sorted(int(c) for c in group["cores"]):
                value = group["cores"][str(c)][f"{phase}_s"]
                heights.append(0.0 if math.isnan(value) else value)
        ax_time.bar(range(len(heights)), heights, bottom=bottoms, color=phase_colors[phase], label=phase)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax_time.set_xticks(range(len(labels)), labels, fontsize="x-small")
    ax_time.set_ylabel("seconds (mean per cell)")
    ax_time.set_title("Where a cell's time goes")
    ax_time.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(out)
    return out


# --------------------------------------------------------------------------- running


def _snakemake(work: Path, config: Path, cores: int, targets: Sequence[str], log_file: Path) -> float:
    """Run the study's workflow in ``work`` on ``targets``; returns its wall time."""
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(work),
        "--workflow-profile", str(ROOT / "workflow" / "profiles" / "default"),
        "--configfile", str(config),
        "--cores", str(cores),
        "--keep-going",
        *targets,
    ]
    tick = time.time()
    with open(log_file, "a") as handle:
        handle.write("\n$ %s\n" % " ".join(command))
        handle.flush()
        proc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.time() - tick
    if proc.returncode != 0:
        raise RuntimeError("snakemake failed (exit %d); see %s and the cell logs under %s"
                           % (proc.returncode, log_file, work / "results" / "logs"))
    return wall


def wait_for_quiet(threshold: float, timeout_s: float, poll_s: float = 10.0) -> dict:
    """Wait (up to ``timeout_s``) until the machine's 1-minute load average is below
    ``threshold``: other work on the machine shares the cells' CPUs (the confinement keeps a
    cell off other cells' CPUs, not other users' processes off the cell's). Never fails: the
    report says whether the machine was quiet when the timed run began."""
    tick = time.time()
    load = os.getloadavg()[0]
    while load >= threshold and time.time() - tick < timeout_s:
        log.info("load average %.2f >= %.2f: waiting for a quieter machine (%.0f s left)",
                 load, threshold, timeout_s - (time.time() - tick))
        time.sleep(poll_s)
        load = os.getloadavg()[0]
    return {"load": round(load, 2), "threshold": threshold, "quiet": load < threshold,
            "waited_s": round(time.time() - tick, 1)}


def _loadavg() -> str:
    try:
        return " ".join("%.2f" % v for v in os.getloadavg())
    except OSError:
        return "n/a"


def bench_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "dataset": {"name": args.dataset, "dir": args.dataset_dir},
        "grid": {"sizes": [args.size], "cores": list(args.cores), "repetitions": args.reps},
        "backends": list(args.backends),
        "scaling_modes": list(args.scaling),
        "training": {"epochs": args.epochs},
        "aggregate": {"allow_partial": False},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    config_path = out / "bench.yaml"
    config_path.write_text(yaml.safe_dump(bench_config(args), sort_keys=False))
    log_file = out / "snakemake.log"
    log_file.write_text("")
    cpus = len(os.sched_getaffinity(0))
    grid = Grid.from_params(args.dataset, args.backends, args.scaling, [args.size], args.cores, args.reps)

    log.info("preparing the data (untimed) in %s", work)
    _snakemake(work, config_path, cpus,
               [paths.subset_dir(args.dataset, args.size), paths.test_dir(args.dataset)], log_file)
    for stale in ("cells", "tables", "figures", "logs"):
        shutil.rmtree(work / "results" / stale, ignore_errors=True)

    walls: dict[str, float] = {}
    load_before = _loadavg()
    quiet = {}
    for backend in args.backends:  # one backend at a time: each gets a study wall time of its own
        targets = [cell.metrics_path for cell in grid.cells() if cell.backend == backend]
        if args.quiet_load > 0:
            quiet[backend] = wait_for_quiet(args.quiet_load, args.quiet_timeout)
        log.info("running %d %s cells (clean grid)", len(targets), backend)
        walls[backend] = _snakemake(work, config_path, cpus, targets, log_file)
        log.info("%s cells done in %.0f s", backend, walls[backend])
    load_after = _loadavg()
    _snakemake(work, config_path, cpus, ["all"], log_file)  # the study's tables and figures

    cells = add_steady_throughput(load_metrics([work / cell.metrics_path for cell in grid.cells()]), work)
    summary = summarize(cells, walls)
    targets = check_targets(summary)
    context = {
        "dataset": args.dataset,
        "size": args.size,
        "cores": list(args.cores),
        "repetitions": args.reps,
        "epochs": args.epochs,
        "host": platform.node(),
        "cpus_usable": cpus,
        "load_before": load_before,
        "quiet_wait": quiet,
        "load_after": load_after,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "study_tables": str(work / paths.tables_dir(args.dataset)),
        "study_figures": str(work / paths.figures_dir(args.dataset)),
    }
    write_outputs(out, cells, summary, targets, context)
    return {"summary": summary, "targets": targets, "context": context}


def write_outputs(out: Path, cells: pd.DataFrame, summary: dict, targets: list, context: dict) -> str:
    report = format_report(summary, targets, context)
    (out / "bench.md").write_text(report)
    (out / "bench.json").write_text(
        json.dumps({"context": context, "summary": summary, "targets": targets}, indent=2, default=str)
    )
    cells.to_csv(out / "bench_cells.csv", index=False)
    bench_figure(summary, out / "bench.png")
    print(report)
    print("written: %s" % ", ".join(str(out / n) for n in ("bench.md", "bench.json", "bench_cells.csv", "bench.png")))
    print("the study's own tables and figures: %s, %s" % (context["study_tables"], context["study_figures"]))
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the dlscale benchmark (see README, Performance).")
    parser.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--dataset-dir", default="/usr/share/datasets/fashion-mnist",
                        help="folder with the four IDX .gz files (default: Debian's Fashion-MNIST)")
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=["bigdl", "torch"], choices=["bigdl", "torch"])
    parser.add_argument("--scaling", nargs="+", default=["strong", "weak"], choices=["strong", "weak"])
    parser.add_argument("--quiet-load", type=float, default=1.5,
                        help="before each backend's timed run, wait until the 1-minute load average is "
                             "below this (0: do not wait); default 1.5")
    parser.add_argument("--quiet-timeout", type=float, default=600, help="wait at most this many seconds")
    parser.add_argument("--report-only", action="store_true",
                        help="recompute the report from the cells of the last run in --out (no training; "
                             "give the same grid options as that run)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.report_only:
        out = Path(args.out).resolve()
        previous = json.loads((out / "bench.json").read_text())
        grid = Grid.from_params(args.dataset, args.backends, args.scaling, [args.size], args.cores, args.reps)
        cells = add_steady_throughput(load_metrics([out / "work" / cell.metrics_path for cell in grid.cells()]),
                                      out / "work")
        walls = {b: s["wall_s"] for b, s in previous["summary"]["studies"].items()}
        summary = summarize(cells, walls)
        targets = check_targets(summary)
        write_outputs(out, cells, summary, targets, previous["context"])
    else:
        result = run(args)
        targets = result["targets"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
