"""The scheduler's view of each cell: Slurm accounting (``sacct``) joined onto ``cells.csv``.

A cell records its Slurm job id (``slurm_job_id`` in metrics.json, from SLURM_JOB_ID). At
aggregation every cell job has ended, so sacct has its final record: the node list,
``AllocCPUS``, ``Elapsed`` and ``TotalCPU`` (user + system CPU time of all its steps, which
sacct sums on the job's own line; the ``-X`` allocation-only line reads 0 there, so it is not
used). CPU efficiency is ``TotalCPU / (Elapsed x AllocCPUS)``.

A cell is flagged ``low_cpu_efficiency`` when its CPU efficiency is below half of what its
cores imply: the CPU efficiency of the group's smallest-core cell of the same size, times
the cell's parallel efficiency (speed-up of ``t_total`` over that cell / core ratio). A cell
whose added cores did useful work keeps them about as busy as its speed-up says; far less
means CPUs sat idle (waiting on another job, on I/O, or confined to fewer CPUs).
"""

from __future__ import annotations

import io
import logging
import math
import re
import shutil
import subprocess
from collections.abc import Iterable

import pandas as pd

log = logging.getLogger(__name__)

SACCT_FIELDS = ("JobID", "JobName", "State", "NodeList", "AllocCPUS", "ElapsedRaw", "TotalCPU", "Elapsed")
LOW_EFFICIENCY_RATIO = 0.5
SACCT_COLUMNS = (
    "sacct_state",
    "sacct_nodelist",
    "sacct_alloc_cpus",
    "sacct_elapsed_s",
    "sacct_total_cpu_s",
    "sacct_core_hours",
    "cpu_efficiency",
    "expected_cpu_efficiency",
    "low_cpu_efficiency",
)
_DURATION = re.compile(r"(?:(?:(\d+)-)?(\d+):)?(\d+):(\d+(?:\.\d+)?)")


def duration_seconds(text: str) -> float:
    """Seconds of a sacct duration: ``[DD-[HH:]]MM:SS[.mmm]`` (TotalCPU) or ``[DD-]HH:MM:SS``."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a sacct duration: {text!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def parse_sacct(text: str) -> pd.DataFrame:
    """One row per job (steps such as ``123.batch`` dropped) from ``sacct --parsable2`` output
    with a header line and the ``SACCT_FIELDS``; indexed by job id (a string)."""
    table = pd.read_csv(io.StringIO(text), sep="|", dtype=str, keep_default_na=False)
    missing = [f for f in SACCT_FIELDS if f not in table.columns]
    if missing:
        raise ValueError(f"sacct output lacks the fields {missing}; it has {list(table.columns)}")
    jobs = table[~table["JobID"].str.contains(".", regex=False)].copy()
    # a requeued job appears once per run: the last line is its final record
    jobs = jobs.drop_duplicates("JobID", keep="last").set_index("JobID")
    out = pd.DataFrame(index=jobs.index)
    out["sacct_state"] = jobs["State"]
    out["sacct_nodelist"] = jobs["NodeList"]
    out["sacct_alloc_cpus"] = jobs["AllocCPUS"].astype(int)
    out["sacct_elapsed_s"] = jobs["ElapsedRaw"].astype(float)
    out["sacct_total_cpu_s"] = jobs["TotalCPU"].map(duration_seconds)
    busy = out["sacct_elapsed_s"] * out["sacct_alloc_cpus"]
    out["sacct_core_hours"] = busy / 3600.0
    out["cpu_efficiency"] = (out["sacct_total_cpu_s"] / busy).where(busy > 0)
    out.index.name = "slurm_job_id"
    return out


def run_sacct(job_ids: Iterable[str], sacct: str = "sacct") -> str | None:
    """sacct's output for the jobs, or None (with a warning saying why) when there is none."""
    ids = sorted({str(j) for j in job_ids if j and str(j) != "nan"}, key=lambda j: (len(j), j))
    if not ids:
        return None
    if shutil.which(sacct) is None:
        log.warning("sacct not found: cells.csv gets no scheduler figures. Fix: aggregate on a host with Slurm's "
                    "client commands (a login node), or ignore when the cells did not run under Slurm")
        return None
    command = [sacct, "--parsable2", "--allusers", "--jobs", ",".join(ids), "--format", ",".join(SACCT_FIELDS)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    except (subprocess.SubprocessError, OSError) as err:
        detail = getattr(err, "stderr", "") or err
        log.warning("sacct failed (%s): cells.csv gets no scheduler figures. Fix: check that Slurm accounting "
                    "(slurmdbd) runs and rerun the aggregation", str(detail).strip())
        return None
    return done.stdout


def with_sacct(cells: pd.DataFrame, sacct_text: str | None) -> pd.DataFrame:
    """``cells`` plus the ``SACCT_COLUMNS`` of each cell's job (NaN where sacct has none)."""
    cells = cells.copy()
    accounting = parse_sacct(sacct_text) if sacct_text else pd.DataFrame(columns=SACCT_COLUMNS[:7])
    job_ids = cells["slurm_job_id"].map(lambda job: "" if pd.isna(job) else str(job))
    shared = sorted(job for job, count in job_ids[job_ids != ""].value_counts().items() if count > 1)
    if shared:
        # slurm/allocation.sbatch runs every cell inside one job: its figures are not a cell's
        log.warning("cells share the Slurm job(s) %s (one allocation for several cells): sacct's figures describe "
                    "the allocation, so those cells get none", ", ".join(shared))
        job_ids = job_ids.where(~job_ids.isin(shared), "")
    for column in SACCT_COLUMNS[:7]:
        cells[column] = job_ids.map(accounting[column]) if len(accounting) else math.nan
    unknown = sorted(set(job_ids) - set(accounting.index) - {""}) if len(accounting) else []
    if unknown:
        log.warning("sacct has no record of job(s) %s: their cells get no scheduler figures", ", ".join(unknown))
    cells["expected_cpu_efficiency"] = expected_cpu_efficiency(cells)
    low = cells["cpu_efficiency"] < LOW_EFFICIENCY_RATIO * cells["expected_cpu_efficiency"]
    cells["low_cpu_efficiency"] = low.where(cells["expected_cpu_efficiency"].notna())
    return cells


def expected_cpu_efficiency(cells: pd.DataFrame) -> pd.Series:
    """Per cell: the smallest-core cell's CPU efficiency (same backend, scaling, size; mean over
    repetitions) times the cell's parallel efficiency against it (mean ``t_total``)."""
    keys = ["backend", "scaling", "size"]
    per_cores = cells.groupby([*keys, "cores"]).agg(wall=("t_total", "mean"), busy=("cpu_efficiency", "mean"))
    base = per_cores.reset_index().sort_values("cores").groupby(keys).first()
    expected = []
    for row in cells.itertuples(index=False):
        key = (row.backend, row.scaling, row.size)
        wall = per_cores.loc[(*key, row.cores), "wall"]
        b = base.loc[key]
        parallel_efficiency = (b["wall"] / wall) / (row.cores / b["cores"])
        expected.append(float(b["busy"] * parallel_efficiency))
    return pd.Series(expected, index=cells.index, dtype=float)


def add_scheduler_figures(cells: pd.DataFrame) -> pd.DataFrame:
    """At aggregation: query sacct for the cells that ran under Slurm and join its figures;
    cells without a job id (local runs) are returned unchanged."""
    if cells.empty or "slurm_job_id" not in cells.columns or not cells["slurm_job_id"].notna().any():
        return cells
    return with_sacct(cells, run_sacct(cells["slurm_job_id"].dropna()))
