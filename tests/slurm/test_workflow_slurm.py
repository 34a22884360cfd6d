"""The study on a real Slurm: `snakemake --profile slurm`, one job per cell, a failed cell rerun
alone, aggregation of a partial grid, and both sbatch wrappers. The failed cell fails for real:
the test SIGKILLs its Spark worker JVM from outside, in each of its two attempts.

Runs against the local Slurm of tests/slurm/slurm-up.sh (skips without it, fails under
DLSCALE_REQUIRE_SLURM=1). The node declares more CPUs than the machine has, and Slurm cannot
pin a job to a CPU that does not exist, so these runs keep at most 2 CPUs allocated at a time
(`--jobs 1`) and every cell gets real CPUs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from slurm_helpers import (POLL_CAP, REPO, SNAKEMAKE, STUDY_SIZE, login_node_env, prepared_study, run, sacct_rows,
                           study_config, wait_node_empty)

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

SIZE = STUDY_SIZE
CELL = "results/cells/fashion-mnist/bigdl/strong/n{size}/c{cores}/r1/metrics.json"
# Test overrides of the profile: the test node's partition and account (the rules carry their own
# runtime and memory), fast polls of the profile's executor dlscale-slurm (capped at 5 s: POLL_CAP),
# one job at a time.
PROFILE_OVERRIDES = [
    "--default-resources", "slurm_partition=debug", "slurm_account=root",
    "--dlscale-slurm-init-seconds-before-status-checks", "3", *POLL_CAP, "--latency-wait", "5", "--jobs", "1",
]


def profile_run(workdir: Path, *configfiles: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake --profile slurm` as a user types it, pointed at a test workdir."""
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--profile", str(REPO / "slurm"),
               "--configfile", str(workdir / "test-config.yaml"), *configfiles, *PROFILE_OVERRIDES]
    return run(command, timeout=1500, env=env or login_node_env())


def run_id(proc: subprocess.CompletedProcess) -> str:
    return re.search(r"SLURM run ID: (\S+)", proc.stdout + proc.stderr).group(1)


def cell_jobs(rid: str, want: int) -> list[dict]:
    rows = sacct_rows(["--name", rid], "JobID,Comment,State,AllocCPUS", want, timeout=120)
    return [r for r in rows if r["Comment"].startswith("rule_train_cell")]


def snapshot(workdir: Path) -> dict:
    return {p.relative_to(workdir): p.read_bytes() for p in (workdir / "results" / "cells").rglob("*") if p.is_file()}


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class WorkerKiller(threading.Thread):
    """SIGKILLs the Spark worker JVM of every run of one cell of ``workdir`` (its Slurm job and the
    retry's) once that run's executor is up, as the OOM killer or a failing node would: the
    cell fails for real ('the Spark worker ... died')."""

    def __init__(self, workdir: Path, cell: str) -> None:
        super().__init__(daemon=True)
        self.workdir, self.cell = workdir.resolve(), cell
        self.killed: dict[int, int] = {}  # cell pid -> worker pid
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.scan()
            except Exception as error:  # reported by the test
                self.errors.append(repr(error))
            time.sleep(0.25)

    def scan(self) -> None:
        children = defaultdict(list)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        children[int(handle.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
                except OSError:
                    continue
        for pid in [pid for pids in children.values() for pid in pids]:
            command = cmdline(pid)
            if ("-m dlscale.cell " not in command or f"--out {self.cell} " not in command or pid in self.killed
                    or os.path.realpath(f"/proc/{pid}/cwd") != str(self.workdir)):
                continue
            tree, stack = [], [pid]
            while stack:
                below = children[stack.pop()]
                tree += below
                stack += below
            commands = {child: cmdline(child) for child in tree}
            workers = [child for child, cmd in commands.items() if "org.apache.spark.deploy.worker.Worker" in cmd]
            if workers and any("CoarseGrainedExecutorBackend" in cmd for cmd in commands.values()):
                os.kill(workers[0], signal.SIGKILL)
                self.killed[pid] = workers[0]

    def __enter__(self) -> "WorkerKiller":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.join(10)


@pytest.fixture(scope="module")
def failed_study(cluster, tmp_path_factory):
    """The grid c1 + c2; the c2 cell fails for real in both its attempts (the first and the
    profile's retry): its Spark worker JVM is SIGKILLed from outside once its executor runs."""
    wait_node_empty(cluster)
    # Data already prepared (the session's copy, as the fault tests use): its three Slurm jobs took
    # 48 s here and nothing in this module is about them; test_slurm_faults.py's `prepared` runs
    # and checks them through Slurm, the multi-node study runs a whole study from scratch.
    workdir = prepared_study(tmp_path_factory, "slurm-study", cores=[1, 2])
    # bin/spark-class daemons, whose worker JVM can die alone (by default a single-node cell's
    # master and worker are threads of its driver JVM)
    study_config(workdir, [1, 2], spark={"single_node_cluster": "daemons"})
    with WorkerKiller(workdir, CELL.format(size=SIZE, cores=2)) as killer:
        proc = profile_run(workdir)
    assert not killer.errors, killer.errors
    return workdir, proc, killer.killed


def test_one_failed_cell_does_not_stop_the_others(failed_study):
    workdir, proc, killed = failed_study
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, "the study with a failing cell must fail"
    assert (workdir / CELL.format(size=SIZE, cores=1)).exists(), log[-3000:]
    assert not (workdir / CELL.format(size=SIZE, cores=2)).exists()
    assert len(killed) == 2, f"the worker of each attempt of c2 was to be killed: {killed}\n{log[-3000:]}"
    cell_log = (workdir / f"results/logs/cells/fashion-mnist/bigdl/strong/n{SIZE}/c2/r1.log").read_text()
    # the log of the last attempt: its worker died, the cell failed with its teardown
    last_worker = list(killed.values())[-1]
    assert re.search(r"FAILED: the Spark worker on %s \(pid %d\) died \(killed by SIGKILL\) while the trainer ran"
                     % (re.escape(socket.gethostname()), last_worker), cell_log), cell_log[-3000:]
    assert "cluster stopped in" in cell_log
    jobs = cell_jobs(run_id(proc), 3)
    states = sorted(r["State"] for r in jobs)
    # c1 completed; c2 failed on its first attempt and on the profile's one retry
    assert states.count("COMPLETED") == 1 and states.count("FAILED") == 2, jobs


def test_every_cell_ran_as_its_own_slurm_job(failed_study):
    workdir, proc, _ = failed_study
    metrics = json.loads((workdir / CELL.format(size=SIZE, cores=1)).read_text())
    jobs = {r["JobID"]: r for r in cell_jobs(run_id(proc), 3)}
    assert metrics["slurm_job_id"] in jobs
    job = jobs[metrics["slurm_job_id"]]
    assert job["State"] == "COMPLETED" and job["AllocCPUS"] == "1"
    assert job["Comment"] == f"rule_train_cell_wildcards_fashion-mnist_strong_{SIZE}_1_1"
    assert len(metrics["cpus_allowed"]) == 1 and not metrics["oversubscribed"]


def test_partial_aggregation_marks_and_lists_missing_cells(failed_study):
    workdir, _, _ = failed_study
    proc = profile_run(workdir, str(REPO / "config" / "partial.yaml"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    jobs = sacct_rows(["--name", run_id(proc)], "JobID,Comment,State,AllocCPUS", 2, timeout=120)
    assert sorted(r["Comment"] for r in jobs) == ["rule_aggregate", "rule_plot"]  # no cell reran
    tables = workdir / "results/tables/fashion-mnist"
    missing = pd.read_csv(tables / "missing_cells.csv")
    assert len(missing) == 1 and int(missing.iloc[0]["cores"]) == 2
    assert "missing" in (tables / "runtime_train_bigdl_strong.md").read_text()
    runtime = pd.read_csv(tables / "runtime_train_bigdl_strong.csv")
    assert runtime["cores_2"].isna().all() and runtime["cores_1"].notna().all()


def test_rerun_runs_only_the_failed_cell_and_keeps_the_others(failed_study, cluster):
    workdir, _, _ = failed_study
    wait_node_empty(cluster)
    before = snapshot(workdir)
    proc = profile_run(workdir)  # the same command, nobody killing its worker
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    jobs = cell_jobs(run_id(proc), 1)
    assert [r["Comment"] for r in jobs] == [f"rule_train_cell_wildcards_fashion-mnist_strong_{SIZE}_2_1"]
    assert jobs[0]["State"] == "COMPLETED" and jobs[0]["AllocCPUS"] == "2"
    after = snapshot(workdir)
    assert {k: v for k, v in after.items() if k in before} == before  # byte-identical
    metrics = json.loads((workdir / CELL.format(size=SIZE, cores=2)).read_text())
    assert metrics["slurm_job_id"] == jobs[0]["JobID"]
    assert len(metrics["cpus_allowed"]) == 2 and not metrics["oversubscribed"]
    missing = pd.read_csv(workdir / "results/tables/fashion-mnist/missing_cells.csv")
    assert missing.empty
    # cells.csv: each cell's core-hours and, beside them, the scheduler's figures of its own job
    cells = pd.read_csv(workdir / "results/tables/fashion-mnist/cells.csv", dtype={"slurm_job_id": str})
    assert sorted(cells["cores"]) == [1, 2]
    for cell in cells.itertuples():
        metrics = json.loads((workdir / CELL.format(size=SIZE, cores=cell.cores)).read_text())
        assert cell.slurm_job_id == metrics["slurm_job_id"] and cell.sacct_state == "COMPLETED"
        assert cell.sacct_alloc_cpus == cell.cores and cell.sacct_nodelist == cluster
        assert cell.core_hours == pytest.approx(cell.cores * metrics["timings_s"]["total"] / 3600, rel=1e-2)
        # TotalCPU / (Elapsed x AllocCPUS); sacct's Elapsed is whole seconds, hence the margin
        assert 0 < cell.cpu_efficiency <= 1.05, cell


def prepared_workdir(failed_study, tmp_path: Path) -> Path:
    """A new study of one 1-core cell that reuses the prepared data (mtimes kept)."""
    source = failed_study[0]
    workdir = tmp_path / "study"
    workdir.mkdir()
    shutil.copytree(source / "resources", workdir / "resources")
    study_config(workdir, [1])
    return workdir


def sbatch_wrapper(script: str, workdir: Path, *sbatch_args: str) -> str:
    """Submit a wrapper as a user does (from the repository root) and wait for it."""
    command = ["sbatch", "--wait", "--parsable", "-o", str(workdir / "wrapper-%j.log"), *sbatch_args,
               str(REPO / "slurm" / script), "-d", str(workdir), "--configfile", str(workdir / "test-config.yaml")]
    if script == "head.sbatch":
        command += PROFILE_OVERRIDES
    proc = run(command, timeout=1500, cwd=REPO, env=login_node_env())
    logs = "".join(p.read_text() for p in workdir.glob("wrapper-*.log"))
    assert proc.returncode == 0, proc.stderr + logs[-3000:]
    return proc.stdout.strip().split(";")[0]


def test_head_job_wrapper_submits_the_cells(failed_study, cluster, tmp_path):
    wait_node_empty(cluster)
    workdir = prepared_workdir(failed_study, tmp_path)
    head = sbatch_wrapper("head.sbatch", workdir)
    metrics = json.loads((workdir / CELL.format(size=SIZE, cores=1)).read_text())
    assert metrics["slurm_job_id"] not in (None, head)  # its own job, submitted by the head
    assert (workdir / "results/figures/fashion-mnist/speedup.png").exists()
    rows = sacct_rows(["-j", head], "JobID,State,AllocCPUS", 1)
    assert rows[0]["State"] == "COMPLETED"


def test_one_allocation_wrapper_runs_the_cells_inside_it(failed_study, cluster, tmp_path):
    wait_node_empty(cluster)
    workdir = prepared_workdir(failed_study, tmp_path)
    job = sbatch_wrapper("allocation.sbatch", workdir, "--cpus-per-task=2")
    metrics = json.loads((workdir / CELL.format(size=SIZE, cores=1)).read_text())
    assert metrics["slurm_job_id"] == job  # ran inside the wrapper's own allocation
    assert len(metrics["cpus_allowed"]) == 1
    assert (workdir / "results/tables/fashion-mnist/speedup_train_bigdl_strong.csv").exists()
