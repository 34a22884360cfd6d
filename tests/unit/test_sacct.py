"""Scheduler figures: sacct output (a real capture from this machine's Slurm 22.05) parsed
and joined onto the cells, CPU efficiency, and the low-efficiency flag."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest

from dlscale import sacct

# `sacct --parsable2 -j 103,106,145,148 --format=<sacct.SACCT_FIELDS>` of finished cell jobs
FIXTURE = Path(__file__).parent / "data" / "sacct_parsable2.txt"


def test_durations_in_every_sacct_spelling() -> None:
    assert sacct.duration_seconds("00:48.631") == pytest.approx(48.631)
    assert sacct.duration_seconds("01:02:03") == 3723
    assert sacct.duration_seconds("1-02:03:04") == 93784
    with pytest.raises(ValueError):
        sacct.duration_seconds("soon")


def test_parse_keeps_the_job_lines_whose_totalcpu_sums_the_steps() -> None:
    jobs = sacct.parse_sacct(FIXTURE.read_text())
    assert list(jobs.index) == ["103", "106", "145", "148"]
    job = jobs.loc["103"]
    assert (job["sacct_state"], job["sacct_nodelist"], job["sacct_alloc_cpus"]) == ("COMPLETED", "vm", 1)
    assert job["sacct_total_cpu_s"] == pytest.approx(2.127 + 46.504)  # batch + step 0
    assert job["cpu_efficiency"] == pytest.approx(48.631 / 91)
    assert jobs.loc["106", "sacct_core_hours"] == pytest.approx(2 * 120 / 3600)
    assert jobs.loc["148", "sacct_state"] == "FAILED"


def _cells() -> pd.DataFrame:
    rows = [  # size, cores, job, t_total
        (1000, 1, "103", 85.0),
        (1000, 2, "106", 60.0),
        (5000, 1, "145", 80.0),
        (5000, 2, "148", 80.0),
        (5000, 4, None, 70.0),  # a cell that ran outside Slurm
    ]
    return pd.DataFrame(
        [dict(backend="bigdl", scaling="strong", size=s, cores=c, repetition=1, slurm_job_id=j, t_total=t)
         for s, c, j, t in rows]
    )


def test_cells_get_scheduler_figures_and_a_flag_when_cpus_sat_idle() -> None:
    cells = sacct.with_sacct(_cells(), FIXTURE.read_text())
    by_job = cells.set_index("slurm_job_id")
    assert by_job.loc["103", "cpu_efficiency"] == pytest.approx(0.5344, abs=1e-4)
    # 2 cores, 1.42x faster than the 1-core cell: expected ~0.53 x 0.71; it used 0.14
    assert by_job.loc["106", "expected_cpu_efficiency"] == pytest.approx(0.5344 * (85 / 60) / 2, abs=1e-3)
    assert by_job.loc["106", "low_cpu_efficiency"] == True  # noqa: E712 (a pandas object)
    assert by_job.loc["103", "low_cpu_efficiency"] == False  # noqa: E712
    outside = cells[cells["slurm_job_id"].isna()].iloc[0]
    assert math.isnan(outside["cpu_efficiency"]) and math.isnan(outside["sacct_alloc_cpus"])


def test_local_cells_are_left_alone_and_sacct_is_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sacct, "run_sacct", lambda *_: pytest.fail("sacct must not run"))
    local = _cells().assign(slurm_job_id=None)
    assert sacct.add_scheduler_figures(local).equals(local)


def test_run_sacct_asks_for_every_job_and_field(tmp_path: Path) -> None:
    fake = tmp_path / "sacct"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\ncat {FIXTURE}\n')
    fake.chmod(0o755)
    text = sacct.run_sacct(["148", "103", None, "103"], sacct=str(fake))
    assert text == FIXTURE.read_text()
    args = (tmp_path / "args").read_text().split()
    assert args[args.index("--jobs") + 1] == "103,148"
    assert args[args.index("--format") + 1] == ",".join(sacct.SACCT_FIELDS)
    assert "--parsable2" in args and "-X" not in args


def test_without_sacct_the_cells_get_empty_scheduler_columns(tmp_path: Path, caplog) -> None:
    assert sacct.run_sacct(["1"], sacct=str(tmp_path / "no-such-sacct")) is None
    assert "sacct not found" in caplog.text
    cells = sacct.with_sacct(_cells(), None)
    assert cells["cpu_efficiency"].isna().all() and set(sacct.SACCT_COLUMNS) <= set(cells.columns)


def test_cells_inside_one_allocation_get_no_per_cell_figures(caplog) -> None:
    cells = _cells().assign(slurm_job_id="103")  # slurm/allocation.sbatch: one job, every cell
    enriched = sacct.with_sacct(cells, FIXTURE.read_text())
    assert enriched["cpu_efficiency"].isna().all()
    assert "one allocation for several cells" in caplog.text
