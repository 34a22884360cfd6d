"""A cell pending on a node that is not available, for real: the test drains the single-node test
cluster's node (`scontrol update nodename=... state=drain`), starts `snakemake --profile slurm` on
a prepared study, and waits until the profile's executor (dlscale-slurm) warns that the cell's job
is pending for a reason that does not clear by itself (squeue's ReqNodeNotAvail, or whatever this
Slurm calls a drained node). Upstream's executor says nothing and Snakemake waits for ever.

Then the test resumes the node: the same job starts, the study ends with exit 0, and the warning
was given once, while the cell had not started (no cell log yet). A drain lets running jobs finish,
so it kills nothing; the node is resumed in a `finally` whatever happens.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from slurm_helpers import (POLL_CAP, cell_paths, prepared_study, profile_command, run, run_uuid, run_with_events,
                           node_state, squeue_jobs, wait_node_empty)

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

POLL_CAP_S = int(POLL_CAP[-1])  # the executor's longest wait between two status checks
WARNING = re.compile(r"Slurm job (\d+) \(rule train_cell \([^)]*\)\) is pending: (.+?): (.+?)\. It waits until")


def snakemake_log(workdir: Path) -> str:
    """The text of this run's Snakemake log (.snakemake/log/, the newest), '' before it exists."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    return logs[-1].read_text(errors="replace") if logs else ""


def test_a_cell_pending_on_a_drained_node_is_warned_about_once_and_runs_when_the_node_returns(
        cluster, tmp_path_factory):
    wait_node_empty(cluster)
    workdir = prepared_study(tmp_path_factory, "pending-study", cores=[1])
    metrics, cell_log = cell_paths(workdir)
    seen: dict = {}

    def step() -> None:
        if "resumed" in seen:
            return
        if "job" not in seen:
            text = snakemake_log(workdir)
            match = WARNING.search(text)
            if not match:
                # Without a warning, the study would wait as long as the node is drained: give
                # the executor a minute from the job's first pending on the node, then resume the
                # node and let the asserts below fail.
                if "SLURM run ID" in text and any(job["State"] == "PENDING" and "DRAIN" in job["Reason"]
                                                  for job in squeue_jobs(run_uuid(text))):
                    seen.setdefault("pending_since", time.monotonic())
                if time.monotonic() - seen.get("pending_since", time.monotonic()) > 60:
                    run(["scontrol", "update", f"nodename={cluster}", "state=resume"])
                    seen["resumed"] = "without a warning"
                return
            seen.update(job=match.group(1), reason=match.group(2), meaning=match.group(3),
                        cell_log_existed=cell_log.exists(), warned_at=time.monotonic(),
                        controller=squeue_jobs(run_uuid(snakemake_log(workdir))))
        # Keep the node drained for a few more of the executor's status checks (every 5 s at most
        # here, POLL_CAP): it must not warn again about the same job and reason.
        if time.monotonic() - seen["warned_at"] < 3 * POLL_CAP_S:
            return
        res = run(["scontrol", "update", f"nodename={cluster}", "state=resume"])
        assert res.returncode == 0, res.stderr
        seen["resumed"] = time.time()

    res = run(["scontrol", "update", f"nodename={cluster}", "state=drain", "reason=dlscale-test-pending"])
    assert res.returncode == 0, res.stderr
    try:
        seen["drained_state"] = node_state(cluster)
        proc = run_with_events(profile_command(workdir, str(metrics.relative_to(workdir))), step, timeout=600)
    finally:
        if node_state(cluster).startswith(("DRAIN", "DOWN")):
            run(["scontrol", "update", f"nodename={cluster}", "state=resume"])
    out = proc.stdout
    print(f"node {cluster}: {seen}")
    # Positive control: the node was drained, and the cell's job pended while it was.
    assert "DRAIN" in seen["drained_state"], seen
    assert "job" in seen, f"no pending warning while the node was drained:\n{out[-4000:]}"
    pending = [job for job in seen["controller"] if job["JobID"] == seen["job"]]
    assert pending and pending[0]["State"] == "PENDING", seen["controller"]
    assert seen["reason"] == pending[0]["Reason"], (seen["reason"], pending)  # the controller's own words
    assert not seen["cell_log_existed"], "the cell had started before the warning"
    # Once only, though the executor checked the job again while it pended.
    warnings = WARNING.findall(out)
    assert [w[0] for w in warnings] == [seen["job"]], warnings
    assert f"scancel {seen['job']}" in out and "sinfo -R" in out
    # The node came back: the same job ran the cell, and the study ended well.
    assert proc.returncode == 0, out[-4000:]
    assert metrics.is_file() and "cell done" in cell_log.read_text()
    assert json.loads(metrics.read_text())["slurm_job_id"] == seen["job"]
