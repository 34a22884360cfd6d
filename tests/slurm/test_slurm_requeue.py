"""A requeued cell and a lost node, for real: `snakemake --profile slurm` runs a BigDL cell on the
local Slurm (tests/slurm/slurm-up.sh) and, once the cell trains, the test requeues its job
(`scontrol requeue`) or sets its node down (`scontrol update nodename=... state=down`).

Slurm then kills the job's processes (SIGTERM, SIGKILL after KillWait) and puts the job back in
the queue with the same id; the cell must tear its Spark cluster down and leave nothing, run
again (once: the profile's executor waits for a requeued job instead of failing it, so its retry
never runs the cell a second time beside Slurm's), and the study must end with exit 0 and the
second run's metrics.

Slurm holds a requeued job until its old credential expires (BeginTime = requeue + 121 s here).
Once the first run has left nothing behind (no process of the cell, no scratch, no slurmstepd of
the job), the test lets the job start at once, as an administrator can (`scontrol update
jobid=<id> StartTime=now`): the wait is Slurm's, not the study's, and would add two minutes to
each test.

Setting the node down also kills other users' jobs on it: the test does it only while no other
job runs there. With the test cluster's ReturnToService=2, slurmctld returns the node to service
by itself as soon as its slurmd answers (here within milliseconds: "node_did_resp: node vm
returned to service"); the test still resumes it (`state=resume`) in a `finally` in case it stays
down, and waits until it takes jobs again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from pathlib import Path

import pytest

from slurm_helpers import (STUDY_SIZE, TRAINING_STARTED, LogHistory, cell_paths, job_step_daemons, kill_leftovers,
                           prepared_study, processes_using, profile_command, run, run_uuid, run_with_events,
                           sacct_records, sacct_rows, scratch_of, skip_or_fail, wait_gone, wait_no_job_processes,
                           node_state, wait_node_empty, wait_until)

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

EPOCHS = 20  # a few seconds of training at least, so that the fault lands mid-training
TABLE = "results/tables/fashion-mnist/runtime_train_bigdl_strong.csv"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", re.M)


def job_of_log(workdir: Path) -> str:
    """The Slurm job id of the running cell: its Slurm log's name in this workdir
    (results/logs/slurm/rule_train_cell/<wildcards>/<jobid>.log)."""
    folder = workdir / f"results/logs/slurm/rule_train_cell/fashion-mnist_strong_{STUDY_SIZE}_1_1"
    logs = sorted(folder.glob("*.log"), key=lambda p: int(p.stem))
    assert logs, f"no Slurm log of the cell's job in {folder}"
    return logs[-1].stem


def job_info(job: str) -> dict:
    """slurmctld's view of a job (JobState, Reason, Restarts, NodeList...); {} once forgotten."""
    out = run(["scontrol", "-o", "show", "job", job]).stdout
    return dict(re.findall(r"\b(\w+)=(\S*)", out))



def other_jobs_on(node: str, ours: str) -> list[str]:
    """Jobs of anyone (other tests, other users) that hold CPUs on ``node``, ours excluded."""
    res = run(["squeue", "-h", "-w", node, "-t", "RUNNING,COMPLETING,SUSPENDED", "-o", "%i %k"])
    return [line for line in res.stdout.splitlines() if line.split()[0] != ours]


def last_log_time(text: str) -> dt.datetime:
    """The time of the last timestamped line of a cell log (the cell logs local time)."""
    day, ms = LOG_TIME.findall(text)[-1]
    return dt.datetime.strptime(day, "%Y-%m-%d %H:%M:%S").replace(microsecond=int(ms) * 1000)


def run_study_with(workdir: Path, inject, targets: list[str]):
    """Run the study; once its cell trains, ``inject(job, fault)`` (once). Returns the
    finished process, the cell log's runs and what ``inject`` recorded in ``fault``."""
    metrics, log = cell_paths(workdir)
    history = LogHistory(log)
    fault: dict = {}

    def step() -> None:
        text = history.poll()
        if fault or len(history.runs) != 1 or TRAINING_STARTED not in text:
            return
        job = job_of_log(workdir)
        scratch = scratch_of(text)
        fault.update(job=job, scratch=scratch, scratch_existed=os.path.isdir(scratch),
                     processes=processes_using(scratch))
        inject(job, fault)
        # The first run's end, from the log the rerun will overwrite
        deadline = time.monotonic() + 60
        while "FAILED" not in history.poll() and time.monotonic() < deadline:
            time.sleep(0.2)
        fault["first_log"] = history.runs[0]
        # Nothing of the first run is left, before the job may run again.
        fault["left"] = wait_gone(scratch)
        # Back in the queue (COMPLETING while its processes end, then PENDING)
        info = wait_until(lambda: (i := job_info(job)).get("JobState") == "PENDING" and i, 120,
                          f"job {job} pending again")
        fault.update(restarts=info.get("Restarts"), requeued_state=info["JobState"], reason=info.get("Reason"))
        # No process of the first run is left (the cell's, and Snakemake's inside the job);
        # whatever is, is recorded, then killed so that it cannot outlive the test.
        fault["job_left"] = wait_no_job_processes(job)
        kill_leftovers(job, fault["job_left"])
        # Skip Slurm's hold only once the node has forgotten the first run: a job started again
        # while its old slurmstepd still runs is refused by slurmd (the node is drained,
        # "Duplicate jobid", and the job held: seen here when the node went down).
        wait_until(lambda: not job_step_daemons(job), 120, f"the first run's slurmstepd of job {job} gone")
        res = run(["scontrol", "update", f"jobid={job}", "StartTime=now"])
        assert res.returncode == 0, res.stderr

    proc = run_with_events(profile_command(workdir, *targets), step, timeout=1200)
    history.poll()
    return proc, history, fault


def check_the_cell_ran_again(workdir: Path, proc, history: LogHistory, fault: dict, first_record: str) -> None:
    out = proc.stdout
    assert fault, f"the cell never started training:\n{out[-4000:]}"
    # Positive control: while it trained, the cell had its scratch and its Spark processes.
    assert fault["scratch_existed"] and len(fault["processes"]) >= 3, fault
    # The first run was stopped by Slurm's SIGTERM, stopped its cluster, wrote nothing...
    first = fault["first_log"]
    assert "cell done" not in first, f"the cell finished before the fault:\n{first[-3000:]}"
    m = re.search(r"FAILED: received SIG\w+", first)
    assert m and first.index(TRAINING_STARTED) < first.index("cluster stopped") < m.start(), first[-4000:]
    # ...and left nothing of the cell: no process uses its scratch, and the scratch is gone.
    assert fault["left"] == [], fault["left"]
    # Slurm put the same job back in the queue.
    assert fault["requeued_state"] == "PENDING", fault
    assert int(fault["restarts"]) >= 1, fault

    # The study ended well, with the second run's metrics.
    assert proc.returncode == 0, out[-4000:]
    assert "Error in rule train_cell" not in out, out[-4000:]
    assert len(history.runs) == 2, f"{len(history.runs)} run(s) of the cell log"
    second = history.runs[1]
    assert "cell done" in second and "FAILED" not in second, second[-3000:]
    assert scratch_of(second) != fault["scratch"]
    metrics = json.loads(cell_paths(workdir)[0].read_text())
    assert metrics["slurm_job_id"] == fault["job"]  # the same Slurm job, run again
    started = dt.datetime.fromisoformat(metrics["started_at"]).astimezone().replace(tzinfo=None)
    assert started > last_log_time(first), (metrics["started_at"], first[-500:])  # after the first run ended

    # One Slurm job of the cell in the run, with two records: the fault's, then COMPLETED. No
    # retry of Snakemake's ran the cell beside Slurm's requeue.
    rows = sacct_rows(["--name", run_uuid(out)], "JobID,Comment,State", 1, timeout=120)
    cells = [r["JobID"] for r in rows if r["Comment"].startswith("rule_train_cell")]
    assert cells == [fault["job"]], rows
    records = [r["State"].split()[0] for r in sacct_records(fault["job"])]
    print(f"Slurm job {fault['job']}: records {records}, Restarts={fault['restarts']}, "
          f"after the fault: {fault['requeued_state']} ({fault['reason']}), "
          f"processes of its first run left: {fault['job_left']}")
    assert records == [first_record, "COMPLETED"], records
    # No process of the job's first run is left (SLURM_JOB_ID=<job>), Snakemake's included.
    assert fault["job_left"] == [], f"left by the first run of job {fault['job']}: {fault['job_left']}"


def test_a_requeued_cell_leaves_nothing_and_runs_again(cluster, tmp_path_factory):
    wait_node_empty(cluster)
    workdir = prepared_study(tmp_path_factory, "requeue-study", cores=[1], epochs=EPOCHS)

    def requeue(job: str, fault: dict) -> None:
        res = run(["scontrol", "requeue", job])
        assert res.returncode == 0, res.stderr

    proc, history, fault = run_study_with(workdir, requeue, [TABLE])
    check_the_cell_ran_again(workdir, proc, history, fault, first_record="REQUEUED")
    assert "SIGTERM" in fault["first_log"]
    runtime = (workdir / TABLE).read_text()
    assert "cores_1" in runtime and str(STUDY_SIZE) in runtime, runtime


def test_a_cell_whose_node_goes_down_leaves_nothing_and_runs_again(cluster, tmp_path_factory):
    wait_node_empty(cluster)
    workdir = prepared_study(tmp_path_factory, "node-down-study", cores=[1], epochs=EPOCHS)
    down: dict = {}

    def node_down(job: str, fault: dict) -> None:
        # Never kill other users' jobs: wait while they run, as long as our cell still runs.
        while (others := other_jobs_on(cluster, job)) and job_info(job).get("JobState") == "RUNNING":
            time.sleep(0.5)
        if others or job_info(job).get("JobState") != "RUNNING":
            skip_or_fail(f"other jobs ran on {cluster} all through the cell's job {job}: {others}")
        down["before"] = node_state(cluster)
        res = run(["scontrol", "update", f"nodename={cluster}", "state=down", "reason=dlscale-test"])
        assert res.returncode == 0, res.stderr
        down["set"] = True
        try:
            down["while_down"] = node_state(cluster)
            # Slurm requeues the job (it stays PENDING while the node is down) and kills its processes
            wait_until(lambda: job_info(job).get("JobState") == "PENDING", 120, f"job {job} requeued")
            down["left"] = wait_gone(fault["scratch"])
            down["pending_reason"] = job_info(job).get("Reason")
            down["before_resume"] = node_state(cluster)
        finally:
            resume(cluster)
        down["after"] = node_state(cluster)

    try:
        proc, history, fault = run_study_with(workdir, node_down, [str(cell_paths(workdir)[0].relative_to(workdir))])
    finally:
        if down.get("set"):
            resume(cluster)
    print(f"node {cluster}: {down}")
    # No assert on down["while_down"]: with ReturnToService=2 the node can be back before
    # scontrol answers again (CI once read IDLE right after the update). That the node went down
    # is proven by sacct's NODE_FAIL record, checked below.
    assert down["left"] == [], down
    assert not down["after"].startswith(("DOWN", "DRAIN", "FAIL")), down
    check_the_cell_ran_again(workdir, proc, history, fault, first_record="NODE_FAIL")


def resume(node: str) -> None:
    """Bring the node back if it is still down (ReturnToService=2 usually returns it by itself)
    and wait until it takes jobs again."""
    if node_state(node).startswith(("DOWN", "DRAIN", "FAIL")):
        run(["scontrol", "update", f"nodename={node}", "state=resume"])
    wait_until(lambda: not node_state(node).startswith(("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING"))
               and node_state(node), 120, f"node {node} back up")
