"""Checks against the running local Slurm started by tests/slurm/slurm-up.sh.

Every test skips when `sinfo` cannot reach a controller, unless
DLSCALE_REQUIRE_SLURM=1, in which case it fails instead (CI sets this after
running slurm-up.sh, so a broken cluster cannot pass as "skipped").

The node declares CPUs=4 on a 2-CPU machine (SlurmdParameters=config_overrides).
Slurm can only pin a job to CPUs that exist: a job placed on declared CPUs 2-3
runs unpinned. The affinity checks therefore wait until the node has no other
jobs, so that our jobs are given CPUs 0 and 1 (see README.md).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

from slurm_helpers import AFFINITY, SNAKEMAKE, run, sacct_rows, skip_or_fail, wait_node_empty  # noqa: E402


def sbatch(tmp: Path, cpus: int, wrap: str, wait: bool = True) -> subprocess.Popen:
    """Start `sbatch [--wait] --parsable`; its stdout starts with the job id."""
    cmd = ["sbatch", "--parsable", f"--cpus-per-task={cpus}", "-o", str(tmp / "%j.out"), "--wrap", wrap]
    if wait:
        cmd.insert(1, "--wait")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"sbatch failed ({proc.returncode}): {err}"
    return out.strip().split(";")[0].splitlines()[0]


def affinity_of(tmp: Path, jobid: str) -> list[int]:
    text = (tmp / f"{jobid}.out").read_text()
    return ast.literal_eval(text.strip().splitlines()[0])


def test_sbatch_one_cpu(cluster, tmp_path):
    jobid = finish(sbatch(tmp_path, 1, AFFINITY))
    cpus = affinity_of(tmp_path, jobid)
    assert cpus and all(isinstance(c, int) for c in cpus)
    rows = sacct_rows(["-j", jobid], "JobID,State,AllocCPUS", 1)
    assert rows[0] == {"JobID": jobid, "State": "COMPLETED", "AllocCPUS": "1"}


def test_two_concurrent_jobs_get_disjoint_cpus(cluster, tmp_path):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs a machine with 2 CPUs")
    wait_node_empty(cluster)
    # Each job holds its CPU for a few seconds, so the two run side by side.
    wrap = AFFINITY + "; sleep 4"
    procs = [sbatch(tmp_path, 1, wrap), sbatch(tmp_path, 1, wrap)]
    ids = [finish(p) for p in procs]
    a, b = (affinity_of(tmp_path, j) for j in ids)
    rows = sacct_rows(["-j", ",".join(ids)], "JobID,State,AllocCPUS,Start,End", 2)
    assert [r["State"] for r in rows] == ["COMPLETED", "COMPLETED"], rows
    assert [r["AllocCPUS"] for r in rows] == ["1", "1"], rows
    # ISO timestamps compare as strings: the jobs overlapped in time.
    assert rows[0]["Start"] < rows[1]["End"] and rows[1]["Start"] < rows[0]["End"], rows
    assert len(a) == 1 and len(b) == 1, f"jobs not pinned to one CPU: {a} {b}"
    assert set(a).isdisjoint(b), f"concurrent jobs share CPUs: {a} {b}"


def test_two_cpu_job_sees_two_cpus(cluster, tmp_path):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs a machine with 2 CPUs")
    wait_node_empty(cluster)
    jobid = finish(sbatch(tmp_path, 2, AFFINITY))
    assert len(affinity_of(tmp_path, jobid)) == 2
    rows = sacct_rows(["-j", jobid], "JobID,State,AllocCPUS", 1)
    assert rows[0] == {"JobID": jobid, "State": "COMPLETED", "AllocCPUS": "2"}


SNAKEFILE = """\
localrules: all

rule all:
    input: "one.txt", "two.txt"

rule one:
    output: "one.txt"
    shell: "{affinity} > {{output}}"

rule two:
    output: "two.txt"
    threads: 2
    shell: "{affinity} > {{output}}"
"""


def test_snakemake_executor_plugin_slurm(cluster, tmp_path):
    if not os.access(SNAKEMAKE, os.X_OK):
        skip_or_fail(f"no driver snakemake at {SNAKEMAKE} (set DLSCALE_DRIVER_SNAKEMAKE)")
    py = sys.executable.replace('"', '\\"')
    affinity = f"{py} -c 'import os; print(sorted(os.sched_getaffinity(0)))'"
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(affinity=affinity))
    # Submit as from a login node: no SLURM_* job variables (SLURM_CONF stays).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    cmd = [
        SNAKEMAKE, "--executor", "slurm", "--jobs", "2",
        "--default-resources", "slurm_partition=debug", "runtime=5", "mem_mb=500",
        "--latency-wait", "5",
        # The plugin's first status check (and its poll interval after a job
        # finishes) defaults to 40 s; 3 s keeps this test at ~20 s instead of ~80 s.
        "--slurm-init-seconds-before-status-checks", "3",
    ]
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        partial = "".join(x.decode() if isinstance(x, bytes) else x for x in (e.stdout, e.stderr) if x)
        m = re.search(r"SLURM run ID: (\S+)", partial)
        if m:  # do not leave this run's jobs behind
            run(["scancel", "--name", m.group(1)])
        pytest.fail(f"snakemake did not finish in 300s:\n{partial[-4000:]}")
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert time.monotonic() - t0 < 300
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)

    rows = sacct_rows(["--name", run_id], "JobID,Comment,State,AllocCPUS", 2)
    by_rule = {r["Comment"]: r for r in rows}
    assert sorted(by_rule) == ["rule_one", "rule_two"], rows
    assert all(r["State"] == "COMPLETED" for r in rows), rows
    assert by_rule["rule_one"]["AllocCPUS"] == "1"
    assert by_rule["rule_two"]["AllocCPUS"] == "2"
    assert (tmp_path / "one.txt").exists()
    # Rule two ran inside its 2-CPU allocation. It sees 2 CPUs only when Slurm
    # placed it on CPUs 0-1: placed on 1-2 it is pinned to CPU 1 alone, and the
    # in-job snakemake (--cores all) then scales its threads down to 1 (README).
    two = ast.literal_eval((tmp_path / "two.txt").read_text().strip())
    assert 1 <= len(two) <= 2, two
