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

This module runs it; the arithmetic is ``dlscale.bench_summary``, the report ``dlscale.bench_report``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from dlscale import hoststat, paths
from dlscale.bench_report import write_outputs
from dlscale.bench_summary import add_steady_throughput, check_targets, summarize
from dlscale.grid import Grid
from dlscale.metrics import load_metrics

log = logging.getLogger("dlscale.bench")

REPO_ROOT = Path(__file__).resolve().parents[2]  # bench runs this checkout's Snakefile
# --study-scale: the grid of issue 13's measurement, one cell per core count at the study's size
STUDY_SCALE = {"size": 30000, "cores": [1, 2], "reps": 1, "backends": ["bigdl"], "scaling": ["strong"]}


def _snakemake(work: Path, config: Path, cores: int, targets: Sequence[str], log_file: Path) -> float:
    """Run the study's workflow in ``work`` on ``targets``; returns its wall time."""
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO_ROOT / "Snakefile"),
        "--directory", str(work),
        "--workflow-profile", str(REPO_ROOT / "workflow" / "profiles" / "default"),
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
    load = hoststat.load_average()
    while load >= threshold and time.time() - tick < timeout_s:
        log.info("load average %.2f >= %.2f: waiting for a quieter machine (%.0f s left)",
                 load, threshold, timeout_s - (time.time() - tick))
        time.sleep(poll_s)
        load = hoststat.load_average()
    return {"load": round(load, 2), "threshold": threshold, "quiet": load < threshold,
            "waited_s": round(time.time() - tick, 1)}


def _load_averages_text() -> str:
    loads = hoststat.load_averages()
    return "n/a" if any(math.isnan(load) for load in loads) else " ".join("%.2f" % load for load in loads)


def bench_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "dataset": {"name": args.dataset, "dir": args.dataset_dir},
        "grid": {"sizes": [args.size], "cores": list(args.cores), "repetitions": args.reps},
        "backends": list(args.backends),
        "scaling_modes": list(args.scaling),
        "training": {"epochs": args.epochs},
        "aggregate": {"allow_partial": False},
    }


def bench_grid(args: argparse.Namespace) -> Grid:
    return Grid.from_params(args.dataset, args.backends, args.scaling, [args.size], args.cores, args.reps)


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
    grid = bench_grid(args)

    log.info("preparing the data (untimed) in %s", work)
    _snakemake(work, config_path, cpus,
               [paths.subset_dir(args.dataset, args.size), paths.test_dir(args.dataset)], log_file)
    for stale in ("cells", "tables", "figures", "logs"):
        shutil.rmtree(work / "results" / stale, ignore_errors=True)

    walls: dict[str, float] = {}
    load_before = _load_averages_text()
    quiet = {}
    for backend in args.backends:  # one backend at a time: each gets a study wall time of its own
        cell_metrics = [cell.metrics_path for cell in grid.cells() if cell.backend == backend]
        if args.quiet_load > 0:
            quiet[backend] = wait_for_quiet(args.quiet_load, args.quiet_timeout)
        log.info("running %d %s cells (clean grid)", len(cell_metrics), backend)
        walls[backend] = _snakemake(work, config_path, cpus, cell_metrics, log_file)
        log.info("%s cells done in %.0f s", backend, walls[backend])
    load_after = _load_averages_text()
    _snakemake(work, config_path, cpus, ["all"], log_file)  # the study's tables and figures

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
    return report(out, grid, walls, context)


def report(out: Path, grid: Grid, walls: dict[str, float], context: dict[str, Any]) -> dict[str, Any]:
    """The end of a run, and all of ``--report-only``: the grid's cells under ``out/work`` ->
    summary, targets, the report files."""
    work = out / "work"
    cells = add_steady_throughput(load_metrics([work / cell.metrics_path for cell in grid.cells()]), work)
    summary = summarize(cells, walls, REPO_ROOT / paths.PUBLISHED_DIR)
    targets = check_targets(summary)
    write_outputs(out, cells, summary, targets, context)
    return {"summary": summary, "targets": targets, "context": context}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the dlscale benchmark (see README, Performance).")
    parser.add_argument("--out", default=None,
                        help="output folder (default results/bench; results/bench-study with --study-scale)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--dataset-dir", default="/usr/share/datasets/fashion-mnist",
                        help="folder with the four IDX .gz files (default: Debian's Fashion-MNIST)")
    parser.add_argument("--size", type=int, default=None,
                        help="training records (default 5000; %d with --study-scale)" % STUDY_SCALE["size"])
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=["bigdl", "torch"], choices=["bigdl", "torch"])
    parser.add_argument("--scaling", nargs="+", default=["strong", "weak"], choices=["strong", "weak"])
    parser.add_argument("--quiet-load", type=float, default=1.5,
                        help="before each backend's timed run, wait until the 1-minute load average is "
                             "below this (0: do not wait); default 1.5")
    parser.add_argument("--quiet-timeout", type=float, default=600, help="wait at most this many seconds")
    parser.add_argument("--study-scale", action="store_true",
                        help="the study as a user runs it (issue 13): %d records, cores 1 and 2, 1 repetition, "
                             "BigDL strong scaling only (--size still applies, for a quicker check); the "
                             "report shows every phase and the fixed cost (total - train) of each cell"
                             % STUDY_SCALE["size"])
    parser.add_argument("--report-only", action="store_true",
                        help="recompute the report from the cells of the last run in --out (no training; "
                             "give the same grid options as that run)")
    args = parser.parse_args(argv)
    if args.study_scale:  # the grid is the mode's; only the size and the output folder may be chosen
        args.cores, args.reps = STUDY_SCALE["cores"], STUDY_SCALE["reps"]
        args.backends, args.scaling = STUDY_SCALE["backends"], STUDY_SCALE["scaling"]
    if args.size is None:
        args.size = STUDY_SCALE["size"] if args.study_scale else 5000
    if args.out is None:
        args.out = "results/bench-study" if args.study_scale else "results/bench"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.report_only:
        out = Path(args.out).resolve()
        previous = json.loads((out / "bench.json").read_text())
        walls = {backend: study["wall_s"] for backend, study in previous["summary"]["studies"].items()}
        report(out, bench_grid(args), walls, previous["context"])
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
