"""The head wrapper (slurm/head.sbatch) on a cluster too small for a cell beside the head job.

The head job holds one CPU of its node for the whole study. On the single-node test cluster
(tests/slurm/slurm-up.sh) a cell of as many cores as the node has can then never start: Slurm
accepts it and keeps it pending for as long as the head waits for it. The wrapper checks first
(dlscale.slurm_check) and refuses such a study with an error naming the cell, the node and the
fixes, before snakemake starts. The positive control is the largest cell that does fit (one
core fewer) through the same wrapper, which passes the check and reaches snakemake (dry run);
a full study through the wrapper runs in test_workflow_slurm.py
(test_head_job_wrapper_submits_the_cells). The negative control skips the check
(DLSCALE_SKIP_SLURM_CHECK=1) and sees the failure it prevents: the cell pending (Resources)
while nothing but the head holds a CPU of the node.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from slurm_helpers import (FAULT_STUDY_OVERRIDES, REPO, login_node_env, prepared_study, run, sacct_rows,
                           skip_or_fail)

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


def node_cpus(node: str) -> int:
    out = run(["scontrol", "-o", "show", "node", node]).stdout
    return int(re.search(r"\bCPUTot=(\d+)", out).group(1))


def submit_head(workdir: Path, *extra: str) -> tuple[str, int, str]:
    """sbatch slurm/head.sbatch from the repository root, as a user does; waits for it.
    Returns the head's job id, sbatch's exit code (the job's) and the head's log."""
    command = ["sbatch", "--wait", "--parsable", "-o", str(workdir / "head-%j.log"),
               str(REPO / "slurm" / "head.sbatch"),
               "-d", str(workdir), "--configfile", str(workdir / "test-config.yaml"), *FAULT_STUDY_OVERRIDES, *extra]
    res = run(command, timeout=900, cwd=REPO, env=login_node_env())
    job = res.stdout.strip().split(";")[0]
    assert job.isdigit(), res.stdout + res.stderr
    return job, res.returncode, (workdir / f"head-{job}.log").read_text()


def refused(job: str, returncode: int, log: str, workdir: Path) -> None:
    """The head failed on the check: nothing was submitted, snakemake never started."""
    assert returncode != 0, log[-3000:]
    assert "Nothing was submitted" in log and "Fix, one of" in log, log[-3000:]
    assert "snakemake --profile slurm" in log and "login node" in log
    assert "Building DAG" not in log
    assert not (workdir / ".snakemake").exists()
    head = sacct_rows(["-j", job], "JobID,State,ExitCode,Start", 1)[0]
    assert head["State"] == "FAILED" and head["ExitCode"] == "2:0", head
    res = run(["sacct", "-X", "-P", "-n", "-S", head["Start"], "--format=JobID,WorkDir"])
    assert [line for line in res.stdout.splitlines() if line.endswith(f"|{workdir}")] == [], res.stdout


def test_a_cell_that_cannot_start_beside_the_head_is_refused_before_anything_is_submitted(cluster, tmp_path_factory):
    cpus = node_cpus(cluster)
    workdir = prepared_study(tmp_path_factory, "head-too-big", cores=[1, cpus])
    job, returncode, log = submit_head(workdir)
    refused(job, returncode, log, workdir)
    # The error names the cell, the node and what the head holds of it, and the fixes.
    assert f"c{cpus} cores" in log and f"1 node(s) x {cpus} CPUs" in log, log[-3000:]
    assert f"{cluster} ({cpus} CPUs, 1 held by this head job {job}: {cpus - 1} beside it)" in log, log[-3000:]
    assert f"at most {cpus - 1} CPUs per node" in log
    assert f"sbatch --cpus-per-task={cpus} slurm/allocation.sbatch" in log
    assert "c1 cores" not in log  # the cell that fits is not named


def test_cells_on_whole_nodes_cannot_share_the_head_s_node(cluster, tmp_path_factory):
    """measurement.exclusive (the default): every cell asks for a whole node, and the only node
    of the test cluster is never whole while the head runs on it."""
    workdir = prepared_study(tmp_path_factory, "head-exclusive", cores=[1], exclusive=True)
    job, returncode, log = submit_head(workdir)
    refused(job, returncode, log, workdir)
    assert "c1 cores" in log and "whole node(s) (measurement.exclusive" in log, log[-3000:]
    assert "measurement.exclusive: false" in log


def test_the_largest_cell_that_fits_beside_the_head_passes_the_check(cluster, tmp_path_factory):
    cpus = node_cpus(cluster)
    workdir = prepared_study(tmp_path_factory, "head-fits", cores=[1, cpus - 1])
    config = yaml.safe_load((workdir / "test-config.yaml").read_text())
    config["training"]["batch_size"] = 16 * (cpus - 1)  # strong scaling: the cores divide the batch
    (workdir / "test-config.yaml").write_text(yaml.safe_dump(config))
    job, returncode, log = submit_head(workdir, "--dry-run")
    assert returncode == 0, log[-3000:]
    assert f"fit partition 'debug' beside this head job {job} on {cluster}" in log, log[-3000:]
    assert f"asks for 1 node(s) x {cpus - 1} CPUs" in log
    # snakemake started and planned the cells (a dry run: nothing submitted)
    assert "train_cell" in log and f"cores={cpus - 1}" in log, log[-3000:]


def test_without_the_check_such_a_cell_waits_beside_the_head(cluster, tmp_path_factory):
    """Negative control, the failure the check prevents: with the check skipped, the head submits
    the cell, which stays pending (Resources) while the node's only allocated CPU is the head's."""
    cpus = node_cpus(cluster)
    workdir = prepared_study(tmp_path_factory, "head-skip-check", cores=[cpus])
    command = ["sbatch", "--parsable", "-o", str(workdir / "head-%j.log"), str(REPO / "slurm" / "head.sbatch"),
               "-d", str(workdir), "--configfile", str(workdir / "test-config.yaml"), *FAULT_STUDY_OVERRIDES]
    res = run(command, cwd=REPO, env=login_node_env(DLSCALE_SKIP_SLURM_CHECK="1"))
    head = res.stdout.strip().split(";")[0]
    assert head.isdigit(), res.stdout + res.stderr
    seen: dict = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not seen:
            jobs = {}
            for line in run(["squeue", "-h", "-o", "%i|%T|%r|%Z|%k"]).stdout.splitlines():
                job, state, reason, where, comment = line.split("|", 4)
                jobs[job] = (state, reason, where, comment)
            cell = [j for j, (_, _, where, comment) in jobs.items()
                    if where == str(workdir) and comment.startswith("rule_train_cell")]
            alloc = re.search(r"\bCPUAlloc=(\d+)", run(["scontrol", "-o", "show", "node", cluster]).stdout)
            if (cell and jobs[cell[0]][:2] == ("PENDING", "Resources") and jobs.get(head, ("",))[0] == "RUNNING"
                    and alloc and alloc.group(1) == "1"):
                running = [j for j, v in jobs.items() if v[0] == "RUNNING"]
                seen.update(cell=cell[0], alloc=alloc.group(1), running=running)
            time.sleep(2)
        if not seen:
            skip_or_fail(f"the cell of job {head}'s study was never seen pending beside the head alone: {jobs}")
        assert seen["running"] == [head], seen  # nothing but the head holds a CPU, yet the cell waits
        assert "skipped (DLSCALE_SKIP_SLURM_CHECK=1)" in (workdir / f"head-{head}.log").read_text()
    finally:
        run(["scancel", head])  # the head's snakemake cancels its cell on SIGTERM
        rows = sacct_rows(["-j", head], "JobID,State", 1, timeout=120)
        if seen.get("cell"):
            cancelled = sacct_rows(["-j", seen["cell"]], "JobID,State", 1, timeout=120)
            if cancelled[0]["State"] == "PENDING":
                run(["scancel", seen["cell"]])
    assert rows[0]["State"].startswith("CANCELLED"), rows
    assert cancelled[0]["State"].startswith("CANCELLED"), cancelled  # the head's snakemake cancelled it
