"""A plan before submitting: every cell of the configured grid with its expected wall time,
memory and core-hours, and where each figure came from.

    python -m dlscale.plan [--configfile my.yaml ...] [--csv plan.csv]

Wall time of one run of a cell (``t_total``, at the configured epochs), in this order:

1. ``fitted``: the cell's size has measured cells (same backend and scaling) at two or more
   core counts: T(N) = T(base) / S(N), with S the USL fitted to their speed-ups
   (dlscale.scaling; Amdahl's law when only two core counts were measured);
2. ``measured``: the size has one measured core count, and the cell is it: its mean;
3. ``published``: the published runtime of the size and core count (linear in the size for
   a size the published grid lacks, and along the published average USL curve for a core
   count it lacks), times the median ratio measured / published over the measured cells of
   the same backend (of any backend when it has none), and unscaled when nothing is
   measured yet (the published epochs are unknown: that figure is a guess).

A measured cell trained with other epochs than configured is first rescaled: its overhead
(``t_total - t_train``) stays, its training time scales with the epochs.

Memory is the rule's request (dlscale.resources): the cells record no memory use. The Slurm
``runtime`` request of a cell is the estimate times ``SAFETY_FACTOR`` (at least
``MIN_RUNTIME_MIN`` minutes), doubled on each retry; an unscaled published figure is no
basis for a walltime (the published runs took a sixth of our demo cells' time), so until a
cell is measured the request stays dlscale.resources' pessimistic one.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dlscale import paths, resources, scaling
from dlscale.grid import Grid, existing_metrics
from dlscale.metrics import MetricsError, load_metrics
from dlscale.tables import AVERAGE, REFERENCE_RUNTIME_CSV, core_counts, speedup_table

log = logging.getLogger(__name__)

SAFETY_FACTOR = 2.0
UNSCALED = "published, unscaled"
MIN_RUNTIME_MIN = 10
PLAN_COLUMNS = (
    "backend", "scaling", "size", "cores", "repetitions", "wall_s", "source",
    "mem_mb", "core_hours", "slurm_runtime_min",
)


def runtime_minutes(wall_s: float, attempt: int = 1) -> int:
    """The Slurm runtime request of a cell expected to take ``wall_s``: with the safety
    factor, at least ``MIN_RUNTIME_MIN``, doubled on each retry."""
    minutes = max(MIN_RUNTIME_MIN, math.ceil(wall_s * SAFETY_FACTOR / 60.0))
    return int(minutes * 2 ** (attempt - 1))


def measured_walls(cells: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """One row per measured run: backend, scaling, size, cores, wall_s at ``epochs`` epochs."""
    if cells.empty:
        return pd.DataFrame(columns=["backend", "scaling", "size", "cores", "wall_s"])
    ratio = epochs / cells["epochs"].astype(float) if "epochs" in cells.columns else 1.0
    train = cells["t_train"].astype(float) if "t_train" in cells.columns else 0.0
    wall = cells["t_total"].astype(float) - train + train * ratio
    out = cells[["backend", "scaling", "size", "cores"]].copy()
    out["size"], out["cores"], out["wall_s"] = out["size"].astype(int), out["cores"].astype(int), wall
    return out


class PublishedShape:
    """Published runtime at any size and core count (see the module docstring, 3.)."""

    def __init__(self, runtime: pd.DataFrame):
        self.cores = core_counts(runtime)
        self.sizes = np.array([int(s) for s in runtime.index], dtype=float)
        self.runtime = runtime.astype(float).to_numpy()
        self.average_fit = scaling.fit_usl(self.cores, speedup_table(runtime.astype(float)).loc[AVERAGE].to_numpy())

    def runtime_s(self, size: int, cores: int) -> float:
        if cores in self.cores:
            column = self.runtime[:, self.cores.index(cores)]
            return float(self._in_size(column, size))
        base = self._in_size(self.runtime[:, 0], size)
        return float(base / self.average_fit.predict([cores])[0])

    def _in_size(self, column: np.ndarray, size: int) -> float:
        if size in self.sizes:
            return float(column[list(self.sizes).index(size)])
        slope, intercept = np.polyfit(self.sizes, column, 1)
        return max(float(intercept + slope * size), float(column.min()) * size / self.sizes.min())


def load_published(reference_dir: str | Path | None) -> PublishedShape | None:
    csv = Path(reference_dir) / REFERENCE_RUNTIME_CSV if reference_dir else None
    return PublishedShape(pd.read_csv(csv, index_col="size")) if csv and csv.is_file() else None


class WallTimeModel:
    """Expected wall time of one run of any cell, from the measured runs and the published table."""

    def __init__(self, measured: pd.DataFrame, published: PublishedShape | None):
        self.measured = measured
        self.published = published
        self._fits: dict[tuple[str, str, int], tuple[scaling.ScalingFit, float] | None] = {}

    def estimate(self, backend: str, scaling_mode: str, size: int, cores: int) -> tuple[float, str]:
        same = self.measured[
            (self.measured["backend"] == backend) & (self.measured["scaling"] == scaling_mode)
            & (self.measured["size"] == size)
        ] if len(self.measured) else self.measured
        means = same.groupby("cores")["wall_s"].mean() if len(same) else pd.Series(dtype=float)
        if len(means) >= 2:
            fit = scaling.fit_usl(list(means.index), (means.iloc[0] / means).to_numpy())
            law = "USL" if fit.warning is None else "Amdahl"
            wall = float(means.iloc[0] / fit.predict([cores])[0])
            return wall, f"fitted ({law} of {len(means)} measured core counts)"
        if len(means) == 1 and int(means.index[0]) == cores:
            return float(means.iloc[0]), f"measured (mean of {len(same)} runs)"
        if self.published is None:
            return math.nan, "none (no measured cell at this size and no published table)"
        ratio, basis = self._calibration(backend)
        return self.published.runtime_s(size, cores) * ratio, basis

    def _calibration(self, backend: str) -> tuple[float, str]:
        """Median measured / published over the measured cells of ``backend`` (else all)."""
        pool = self.measured[self.measured["backend"] == backend] if len(self.measured) else self.measured
        if pool.empty:
            pool = self.measured
        if pool.empty:
            return 1.0, f"{UNSCALED} (nothing measured yet; the published epochs are unknown)"
        ratios = [
            row.wall_s / self.published.runtime_s(int(row.size), int(row.cores)) for row in pool.itertuples()
        ]
        ratio = float(np.median(ratios))
        return ratio, f"published x {ratio:.2f} (median measured/published of {len(ratios)} runs)"


@dataclass(frozen=True)
class CellPlan:
    backend: str
    scaling: str
    size: int
    cores: int
    repetitions: int
    wall_s: float
    source: str
    mem_mb: int
    fallback_runtime_min: int  # dlscale.resources' pessimistic request

    @property
    def core_hours(self) -> float:
        return self.cores * self.wall_s * self.repetitions / 3600.0

    @property
    def slurm_runtime_min(self) -> int:
        if math.isnan(self.wall_s) or self.source.startswith(UNSCALED):
            return self.fallback_runtime_min
        return runtime_minutes(self.wall_s)


def make_plan(
    grid: Grid,
    epochs: int,
    measured_cells: pd.DataFrame,
    reference_dir: str | Path | None,
    cores_per_node: int | None = None,
) -> pd.DataFrame:
    """One row per (backend, scaling, size, cores) of the grid, columns ``PLAN_COLUMNS``."""
    model = WallTimeModel(measured_walls(measured_cells, epochs), load_published(reference_dir))
    rows = []
    for backend, scaling_mode in grid.groups():
        for size in grid.sizes:
            for cores in grid.cores:
                wall, source = model.estimate(backend, scaling_mode, size, cores)
                fallback = resources.cell_runtime(size, cores, epochs, cores_per_node or max(grid.cores))
                cell = CellPlan(backend, scaling_mode, size, cores, len(grid.repetitions), wall, source,
                                resources.cell_mem_mb(backend, size), fallback)
                row = {**asdict(cell), "core_hours": cell.core_hours, "slurm_runtime_min": cell.slurm_runtime_min}
                rows.append({column: row[column] for column in PLAN_COLUMNS})
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))


def _grid_of(config: Mapping[str, Any]) -> Grid:
    return Grid.from_params(
        config["dataset"]["name"], config["backends"], config["scaling_modes"],
        config["grid"]["sizes"], config["grid"]["cores"], int(config["grid"]["repetitions"]),
    )


def measured_cells(grid: Grid, workdir: str | Path = ".") -> pd.DataFrame:
    """The grid's cells measured under ``workdir``; none, with a warning, when a metrics file
    is bad: the aggregation reports it with its fix, and a plan must not stop a run for it."""
    try:
        return load_metrics(existing_metrics(grid, workdir))
    except MetricsError as err:
        log.warning("the plan ignores the measured cells: %s", err)
        return load_metrics([])


def record_for_config(plan: pd.DataFrame, config: Mapping[str, Any], workdir: str | Path = ".") -> pd.DataFrame:
    """``record_plan`` into ``plan_file`` under ``workdir``, given the cells measured there."""
    grid = _grid_of(config)
    return record_plan(plan, Path(workdir) / plan_file(grid.dataset), measured_cells(grid, workdir))


def record_at_start(plan: pd.DataFrame, config: Mapping[str, Any], workdir: str | Path = ".") -> None:
    """The workflow's onstart: record the plan; a failure is a warning, never a failed run."""
    try:
        record_for_config(plan, config, workdir)
    except (OSError, ValueError, KeyError) as err:
        log.warning("could not record the plan in %s (%s): plan_vs_actual will lack it. Fix: make "
                    "results/plan writable, or run python -m dlscale.plan --record", plan_file(config["dataset"]["name"]), err)


def plan_for_config(
    config: Mapping[str, Any], workdir: str | Path = ".", reference_dir: str | Path | None = None
) -> pd.DataFrame:
    """The plan of a workflow configuration, from the cells measured under ``workdir`` and the
    published tables in ``reference_dir`` (default: ``paths.PUBLISHED_DIR`` under ``workdir``)."""
    grid = _grid_of(config)
    return make_plan(
        grid,
        int(config["training"]["epochs"]),
        measured_cells(grid, workdir),
        reference_dir or Path(workdir) / paths.PUBLISHED_DIR,
        int(config.get("slurm", {}).get("cores_per_node") or max(grid.cores)),
    )


def planned_runtimes(plan: pd.DataFrame) -> dict[tuple[str, str, int, int], int]:
    """(backend, scaling, size, cores) -> the Slurm runtime request in minutes, first attempt."""
    return {
        (str(row.backend), str(row.scaling), int(row.size), int(row.cores)): int(row.slurm_runtime_min)
        for row in plan.itertuples(index=False)
    }


# --------------------------------------------------------------------------- the recorded plan

KEYS = ["backend", "scaling", "size", "cores"]


def _keys(table: pd.DataFrame) -> list[tuple]:
    return list(table[KEYS].astype({"size": int, "cores": int}).itertuples(index=False, name=None))


def plan_file(dataset: str) -> str:
    """Where the workflow records the plan of a run, for the plan-versus-actual table."""
    return f"results/plan/{dataset}.csv"


def record_plan(plan: pd.DataFrame, path: str | Path, measured_cells: pd.DataFrame) -> pd.DataFrame:
    """Write ``plan`` to ``path``, keeping the recorded row of every cell measured since:
    the plan-versus-actual table compares a cell with the estimate it had before it ran."""
    path = Path(path)
    new = plan.assign(planned_at=pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"))
    if path.is_file() and not measured_cells.empty:
        old = pd.read_csv(path, dtype={"backend": str, "scaling": str})
        done = set(_keys(measured_cells))
        kept = old[[key in done for key in _keys(old)]]
        kept_keys = set(_keys(kept))
        new = pd.concat([kept, new[[key not in kept_keys for key in _keys(new)]]]).sort_values(KEYS, ignore_index=True)
    text = new.to_csv(index=False)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return new  # unchanged: a run with nothing left to plan leaves the file as it was
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return new


# --------------------------------------------------------------------------- printing


def plan_text(plan: pd.DataFrame, dataset: str) -> str:
    header = f"{'backend':8} {'scaling':7} {'size':>6} {'cores':>5} {'reps':>4} {'wall/run':>9} " \
             f"{'memory':>8} {'core-h':>8} {'Slurm min':>9}  source"
    lines = [f"Plan for dataset {dataset}: every cell's expected wall time (one run), memory and core-hours "
             f"(all runs); Slurm runtime request = {SAFETY_FACTOR:g} x wall time, at least {MIN_RUNTIME_MIN} min "
             "(the pessimistic default of dlscale.resources while the source is unscaled).",
             header, "-" * len(header)]
    for row in plan.itertuples(index=False):
        lines.append(
            f"{row.backend:8} {row.scaling:7} {row.size:>6} {row.cores:>5} {row.repetitions:>4} "
            f"{_duration(row.wall_s):>9} {row.mem_mb:>6}MB {row.core_hours:>8.3f} "
            f"{'?' if pd.isna(row.slurm_runtime_min) else int(row.slurm_runtime_min):>9}  {row.source}"
        )
    serial = float((plan["wall_s"] * plan["repetitions"]).sum())
    lines.append("-" * len(header))
    lines.append(f"total: {int(plan['repetitions'].sum())} runs of {len(plan)} cells, {_duration(serial)} one after "
                 f"the other, {plan['core_hours'].sum():.3f} core-hours, largest memory request "
                 f"{int(plan['mem_mb'].max()) if len(plan) else 0} MB (the rule's, dlscale.resources)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "unknown"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def load_config(configfiles: Sequence[str | Path], workdir: str | Path = ".") -> dict[str, Any]:
    """config/config.yaml under ``workdir``, then each ``--configfile`` merged over it, as
    Snakemake merges them (nested keys replaced one by one)."""
    config: dict[str, Any] = {}
    for path in [Path(workdir) / "config" / "config.yaml", *map(Path, configfiles)]:
        try:
            _merge(config, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        except OSError as err:
            raise SystemExit(f"cannot read {path}: {err.strerror}. Fix: run from the repository root "
                             "(or pass --workdir) and name existing --configfile files.") from err
    return config


def _merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlscale.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", action="append", default=[], help="as for snakemake (repeatable)")
    parser.add_argument("--workdir", default=".", help="the study's folder (the repository root)")
    parser.add_argument("--csv", help="also write the plan to this CSV file")
    parser.add_argument("--record", action="store_true",
                        help="also record it for the plan-versus-actual table (results/plan/<dataset>.csv)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    config = load_config(args.configfile, args.workdir)
    plan = plan_for_config(config, args.workdir)
    print(plan_text(plan, config["dataset"]["name"]))
    if args.csv:
        plan.to_csv(args.csv, index=False)
    if args.record:
        record_for_config(plan, config, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
