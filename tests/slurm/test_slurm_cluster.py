"""Checks against the running local Slurm started by tests/slurm/slurm-up.sh.

Every test skips when `sinfo` cannot reach a controller (or the machine has
fewer than 2 CPUs), unless DLSCALE_REQUIRE_SLURM=1, in which case it fails
instead (CI and `make test` set this after running slurm-up.sh, so a broken
cluster cannot pass as "skipped").

The node declares CPUs=4 on a 2-CPU machine (SlurmdParameters=config_overrides).
Slurm can only pin a job to CPUs that exist: a job placed on declared CPUs 2-3
runs unpinned. The affinity checks therefore wait until the node has no other
jobs, so that our jobs are given CPUs 0 and 1 (see README.md).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
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


def need_two_cpus() -> None:
    usable = os.cpu_count() or 1
    if usable < 2:
        skip_or_fail(f"needs a machine with 2 CPUs (this one has {usable})")


# A job of the pair: marks itself started, then waits (bounded) until its partner has started
# too, so both are known to run at the same moment, then prints its CPUs. Event order, no clock:
# a job that never sees its partner exits 3 and the test fails.
RENDEZVOUS = (
    "touch {me}.started; i=0; "
    "while [ ! -e {partner}.started ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; "
    "[ -e {partner}.started ] || exit 3; {affinity}"
)


def rendezvous(tmp: Path, me: str, partner: str, affinity: str = AFFINITY) -> str:
    return RENDEZVOUS.format(me=shlex.quote(str(tmp / me)), partner=shlex.quote(str(tmp / partner)),
                             affinity=affinity)


def test_sbatch_one_cpu(cluster, tmp_path):
    wait_node_empty(cluster)  # on an empty node the job gets CPU 0, which exists (README quirk 1)
    jobid = finish(sbatch(tmp_path, 1, AFFINITY))
    assert len(affinity_of(tmp_path, jobid)) == 1, affinity_of(tmp_path, jobid)
    rows = sacct_rows(["-j", jobid], "JobID,State,AllocCPUS", 1)
    assert rows[0] == {"JobID": jobid, "State": "COMPLETED", "AllocCPUS": "1"}


def test_two_concurrent_jobs_get_disjoint_cpus(cluster, tmp_path):
    need_two_cpus()
    wait_node_empty(cluster)
    # Each job waits for the other to have started: they hold their CPUs at the same time.
    procs = [sbatch(tmp_path, 1, rendezvous(tmp_path, "a", "b")), sbatch(tmp_path, 1, rendezvous(tmp_path, "b", "a"))]
    ids = [finish(p) for p in procs]
    a, b = (affinity_of(tmp_path, j) for j in ids)
    rows = sacct_rows(["-j", ",".join(ids)], "JobID,State,AllocCPUS", 2)
    assert [r["State"] for r in rows] == ["COMPLETED", "COMPLETED"], rows
    assert [r["AllocCPUS"] for r in rows] == ["1", "1"], rows
    assert len(a) == 1 and len(b) == 1, f"jobs not pinned to one CPU: {a} {b}"
    assert set(a).isdisjoint(b), f"concurrent jobs share CPUs: {a} {b}"


def test_two_cpu_job_sees_two_cpus(cluster, tmp_path):
    need_two_cpus()
    wait_node_empty(cluster)
    jobid = finish(sbatch(tmp_path, 2, AFFINITY))
    assert len(affinity_of(tmp_path, jobid)) == 2
    rows = sacct_rows(["-j", jobid], "JobID,State,AllocCPUS", 1)
    assert rows[0] == {"JobID": jobid, "State": "COMPLETED", "AllocCPUS": "2"}


# one and three (1 CPU each) run at the same time (each waits for the other to start); two
# (2 CPUs) runs after both, alone: at most 2 CPUs are allocated at once, so every job is pinned
# to CPUs that exist (README quirk 1) and the sets are exact.
SNAKEFILE = """\
localrules: all

rule all:
    input: "one.txt", "two.txt", "three.txt"

rule one:
    output: "one.txt"
    shell: "{one} > {{output}}"

rule three:
    output: "three.txt"
    shell: "{three} > {{output}}"

rule two:
    input: "one.txt", "three.txt"
    output: "two.txt"
    threads: 2
    shell: "{affinity} > {{output}}"
"""


def test_snakemake_executor_plugin_slurm(cluster, tmp_path):
    if not os.access(SNAKEMAKE, os.X_OK):
        skip_or_fail(f"no driver snakemake at {SNAKEMAKE} (set DLSCALE_DRIVER_SNAKEMAKE)")
    need_two_cpus()
    py = sys.executable.replace('"', '\\"')
    affinity = f"{py} -c 'import os; print(sorted(os.sched_getaffinity(0)))'"
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(
        affinity=affinity,
        one=rendezvous(tmp_path, "one", "three", affinity).replace('"', '\\"'),
        three=rendezvous(tmp_path, "three", "one", affinity).replace('"', '\\"'),
    ))
    # Submit as from a login node: no SLURM_* job variables (SLURM_CONF stays).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    cmd = [
        SNAKEMAKE, "--executor", "slurm", "--jobs", "2",
        "--default-resources", "slurm_partition=debug", "runtime=5", "mem_mb=500",
        "--latency-wait", "5",
        # The plugin's first status check (and its poll interval after a job
        # finishes) defaults to 40 s; 3 s keeps this test at ~30 s instead of ~2 min.
        "--slurm-init-seconds-before-status-checks", "3",
    ]
    wait_node_empty(cluster)  # our jobs get CPUs 0 and 1, which exist
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
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)

    rows = sacct_rows(["--name", run_id], "JobID,Comment,State,AllocCPUS", 3)
    by_rule = {r["Comment"]: r for r in rows}
    assert sorted(by_rule) == ["rule_one", "rule_three", "rule_two"], rows
    assert all(r["State"] == "COMPLETED" for r in rows), rows
    assert by_rule["rule_one"]["AllocCPUS"] == "1" and by_rule["rule_three"]["AllocCPUS"] == "1"
    assert by_rule["rule_two"]["AllocCPUS"] == "2"
    # one and three ran at the same time (each saw the other start), each pinned to its own CPU
    one, three, two = (ast.literal_eval((tmp_path / f"{name}.txt").read_text().strip())
                       for name in ("one", "three", "two"))
    assert len(one) == 1 and len(three) == 1, (one, three)
    assert set(one).isdisjoint(three), f"concurrent jobs share CPUs: {one} {three}"
    # two, alone on the node, got CPUs 0-1: the in-job snakemake saw both and ran all its threads
    assert len(two) == 2, two
