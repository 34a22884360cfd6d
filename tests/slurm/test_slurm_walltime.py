"""A real walltime: Slurm's warning signal and time limit reach a BigDL cell mid-training.

The study runs with `snakemake --profile slurm` on the local Slurm (tests/slurm/slurm-up.sh).
Once the cell's log shows training, the test shrinks the running job's time limit from outside
(`scontrol update jobid=<id> TimeLimit=<minutes>`) so that less than the rule's 120 s warning
(`--signal=USR1@120`) is left: slurmctld then sends SIGUSR1 at its next time-limit check (every
30 s) and would kill the job at the new limit. The cell must tear its Spark cluster down, write no
metrics.json and leave nothing; the profile's retry (attempt 2, with twice the runtime) must run
the cell to the end; a cell completed before stays byte-identical.

The training must outlast the wait for slurmctld's check, so the test first runs one cell for three
epochs (the completed cell of the study), measures an epoch, and gives the faulted cell enough
epochs for about a minute of training.
"""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from slurm_helpers import (STUDY_SIZE, TRAINING_STARTED, LogHistory, cell_paths, kill_leftovers, prepared_study,
                           processes_using, profile_command, run, run_uuid, run_with_events, sacct_records,
                           sacct_rows, scratch_of, study_config, wait_gone, wait_no_job_processes,
                           wait_node_empty)

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

WARNING_S = 120  # the rule's --signal=USR1@120
TRAINING_TARGET_S = 60  # training time of the faulted cell: well beyond slurmctld's 30 s check


def slurm_minutes(value: str) -> float:
    """Slurm's [D-]HH:MM:SS (or MM:SS) as minutes."""
    days, _, clock = value.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return (int(days or 0) * 24 + hours) * 60 + minutes + seconds / 60


def job_field(job: str, field: str) -> str:
    out = run(["scontrol", "-o", "show", "job", job]).stdout
    m = re.search(rf"\b{field}=(\S+)", out)
    assert m, f"no {field} in scontrol show job {job}: {out}"
    return m.group(1)


def job_of_log(workdir, rep: int) -> str:
    """The Slurm job id of cell r<rep> (1 core) that runs now: its newest Slurm log in this workdir
    (the executor writes results/logs/slurm/rule_train_cell/<wildcards>/<jobid>.log)."""
    folder = workdir / f"results/logs/slurm/rule_train_cell/fashion-mnist_strong_{STUDY_SIZE}_1_{rep}"
    logs = sorted(folder.glob("*.log"), key=lambda p: int(p.stem))
    assert logs, f"no Slurm log of the cell's job in {folder}"
    return logs[-1].stem


def epochs_for(seconds: float, log: str) -> int:
    """Epochs for about ``seconds`` of training, from a cell log of several epochs: BigDL logs the
    training's wall clock at each epoch's end, and the first epoch is slower (warm-up)."""
    ends = [float(s) for s in re.findall(r"\[Wall Clock ([\d.]+)s\] Epoch finished", log)]
    assert len(ends) >= 2, log[-3000:]
    per_epoch = (ends[-1] - ends[0]) / (len(ends) - 1)
    return max(4, min(400, 1 + math.ceil(seconds / per_epoch)))


@pytest.fixture(scope="module")
def walltime_study(cluster, tmp_path_factory):
    wait_node_empty(cluster)
    workdir = prepared_study(tmp_path_factory, "walltime-study", cores=[1], repetitions=2)
    done_metrics, done_log = cell_paths(workdir, rep=1)
    # r1: a cell that completes (3 epochs): the study's completed cell, and the training speed.
    study_config(workdir, [1], repetitions=2, epochs=3)
    first = run(profile_command(workdir, str(done_metrics.relative_to(workdir))), timeout=900)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    epochs = epochs_for(TRAINING_TARGET_S, done_log.read_text())
    study_config(workdir, [1], repetitions=2, epochs=epochs)
    before = {p: p.read_bytes() for p in (done_metrics, done_log)}

    metrics, log = cell_paths(workdir, rep=2)
    history = LogHistory(log)
    fault: dict = {}

    def step() -> None:
        text = history.poll()
        if fault or len(history.runs) != 1 or TRAINING_STARTED not in text:
            return
        job = job_of_log(workdir, rep=2)
        scratch = scratch_of(text)
        fault.update(job=job, scratch=scratch, limit=job_field(job, "TimeLimit"),
                     processes=processes_using(scratch), scratch_existed=os.path.isdir(scratch))
        elapsed_s = slurm_minutes(job_field(job, "RunTime")) * 60
        # the smallest limit that leaves under WARNING_S: between 60 and 120 s from now
        new_limit = int((elapsed_s + WARNING_S - 1) // 60)
        res = run(["scontrol", "update", f"jobid={job}", f"TimeLimit={new_limit}"])
        assert res.returncode == 0, res.stderr
        fault.update(elapsed_s=elapsed_s, new_limit=new_limit, log_at_fault=text)

    proc = run_with_events(profile_command(workdir, str(metrics.relative_to(workdir))), step, timeout=1200)
    history.poll()
    return dict(workdir=workdir, proc=proc, history=history, fault=fault, epochs=epochs,
                before=before, metrics=metrics)


def test_the_walltime_warning_tears_the_cell_down_and_the_retry_finishes_it(walltime_study):
    proc, history, fault = walltime_study["proc"], walltime_study["history"], walltime_study["fault"]
    out = proc.stdout
    assert fault, f"the cell never started training:\n{out[-4000:]}"
    # Positive control: while it trained, the cell had its scratch and its Spark processes.
    assert fault["scratch_existed"], fault
    assert len(fault["processes"]) >= 3, fault["processes"]  # master, worker, driver/executor JVMs

    assert len(history.runs) == 2, f"{len(history.runs)} run(s) of the cell's log:\n{out[-4000:]}"
    first, second = history.runs
    # Attempt 1: trained, got the warning, stopped its cluster, failed without metrics.
    assert "cell done" not in first, (
        f"the cell finished its {walltime_study['epochs']} epochs before Slurm's warning:\n{first[-3000:]}")
    m = re.search(r"FAILED: received (SIGUSR1|SIGTERM)", first)
    assert m, first[-4000:]
    print(f"attempt 1 received {m.group(1)}")
    trained = first.index(TRAINING_STARTED)
    stopped = first.index("cluster stopped")
    assert trained < stopped < m.start(), first[-4000:]
    # Nothing of attempt 1 is left: no process uses its scratch, the scratch is gone, and no
    # process of its Slurm job runs (Snakemake's inside the job included).
    assert wait_gone(fault["scratch"]) == []
    left = wait_no_job_processes(fault["job"])
    kill_leftovers(fault["job"], left)
    assert left == [], left

    # Attempt 2 ran to the end and wrote the metrics.
    assert proc.returncode == 0, out[-4000:]
    assert "cell done" in second and "FAILED" not in second, second[-3000:]
    assert scratch_of(second) != fault["scratch"]
    metrics = json.loads(walltime_study["metrics"].read_text())
    assert metrics["epochs"] == walltime_study["epochs"]
    assert metrics["slurm_job_id"] != fault["job"]

    # Slurm's side: the run's two jobs of the cell, the first ended by the fault, the second
    # completed with twice the first's runtime (the profile's retry: runtime doubles).
    rows = sacct_rows(["--name", run_uuid(out)], "JobID,Comment,State,Timelimit,ExitCode,SubmitLine", 2,
                      timeout=120)
    jobs = [r for r in rows if r["Comment"].startswith("rule_train_cell")]
    assert [r["JobID"] for r in jobs] == [fault["job"], metrics["slurm_job_id"]], jobs
    first_job, second_job = jobs
    print(f"attempt 1: Slurm job {first_job['JobID']} {first_job['State']} exit {first_job['ExitCode']}, "
          f"time limit {fault['limit']} shrunk to {fault['new_limit']} min at {fault['elapsed_s']:.0f} s")
    assert first_job["State"].split()[0] in ("FAILED", "TIMEOUT", "CANCELLED"), first_job
    assert "--signal=USR1@120" in first_job["SubmitLine"], first_job  # the rule's warning, as submitted
    assert slurm_minutes(first_job["Timelimit"]) == fault["new_limit"], first_job
    assert second_job["State"] == "COMPLETED", second_job
    original, retried = slurm_minutes(fault["limit"]), slurm_minutes(second_job["Timelimit"])
    assert 2 * original <= retried <= 2 * original + 1, (fault["limit"], second_job)  # int() of the doubled value
    # Slurm kept one record of each job (the fault was not a requeue)
    assert [r["State"].split()[0] for r in sacct_records(fault["job"])] == [first_job["State"].split()[0]]


def test_a_completed_cell_of_the_study_stays_byte_identical(walltime_study):
    for path, content in walltime_study["before"].items():
        assert path.read_bytes() == content, path
