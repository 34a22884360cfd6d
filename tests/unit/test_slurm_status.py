"""The dlscale-slurm executor's mapping of Slurm job states (src/snakemake_executor_plugin_dlscale_slurm/states.py)."""

from __future__ import annotations

import pytest

from snakemake_executor_plugin_dlscale_slurm import states
from snakemake_executor_plugin_dlscale_slurm.states import (
    Outcome,
    classify,
    lookup_ids,
    needs_controller,
    parse_status_lines,
    settle,
)

SUCCEEDED, FAILED, ACTIVE = Outcome.SUCCEEDED, Outcome.FAILED, Outcome.ACTIVE

# state as sacct prints it -> (outcome, ask the controller first, held)
EXPECTED = {
    "COMPLETED": (SUCCEEDED, False, False),
    "CANCELLED": (FAILED, False, False),
    "CANCELLED by 0": (FAILED, False, False),
    "CANCELLED by 1234": (FAILED, False, False),
    "FAILED": (FAILED, False, False),
    "TIMEOUT": (FAILED, False, False),
    "OUT_OF_MEMORY": (FAILED, False, False),
    "DEADLINE": (FAILED, False, False),
    "BOOT_FAIL": (FAILED, False, False),
    "NODE_FAIL": (FAILED, True, False),
    "PREEMPTED": (FAILED, True, False),
    "LAUNCH_FAILED": (FAILED, True, False),
    "RECONFIG_FAIL": (FAILED, True, False),
    "REVOKED": (FAILED, True, False),
    "PENDING": (ACTIVE, False, False),
    "RUNNING": (ACTIVE, False, False),
    "COMPLETING": (ACTIVE, False, False),
    "CONFIGURING": (ACTIVE, False, False),
    "POWER_UP_NODE": (ACTIVE, False, False),
    "EXPEDITING": (ACTIVE, False, False),
    "SIGNALING": (ACTIVE, False, False),
    "STAGE_OUT": (ACTIVE, False, False),
    "UPDATE_DB": (ACTIVE, False, False),
    "RESIZING": (ACTIVE, False, False),
    "REQUEUED": (ACTIVE, False, False),
    "REQUEUE_FED": (ACTIVE, False, False),
    "SUSPENDED": (ACTIVE, False, False),
    "STOPPED": (ACTIVE, False, False),
    "REQUEUE_HOLD": (ACTIVE, False, True),
    "SPECIAL_EXIT": (ACTIVE, False, True),
    "RESV_DEL_HOLD": (ACTIVE, False, True),
    # not Slurm states (upstream's list has ERROR): decided with the controller
    "ERROR": (FAILED, True, False),
    "FROBNICATED": (FAILED, True, False),
    "": (FAILED, True, False),
}


@pytest.mark.parametrize("state", list(EXPECTED))
def test_every_state_maps_to_its_outcome(state):
    verdict = classify(state)
    assert (verdict.outcome, verdict.ask_controller, verdict.held) == EXPECTED[state]
    assert verdict.state == state and verdict.meaning


def test_the_table_covers_every_state_the_module_knows():
    known = {word for word in EXPECTED if word and " " not in word and word not in ("ERROR", "FROBNICATED")}
    assert known == set(states.KNOWN_STATES)
    for word in states.KNOWN_STATES:  # and the module docstring documents each
        assert word in states.__doc__, word


def test_cancelled_by_names_the_user_id():
    assert "user id 1234" in classify("CANCELLED by 1234").meaning
    assert "user id 0" in classify("CANCELLED by 0").meaning


@pytest.mark.parametrize("state", ["CANCELLED+", "  cancelled by 0 ", "RUNNING\n", "completed"])
def test_spelling_variants(state):
    expected = ACTIVE if "RUNNING" in state else (SUCCEEDED if "completed" in state else FAILED)
    assert classify(state).outcome is expected


def test_unknown_words_and_empty_are_not_known():
    assert not classify("FROBNICATED").known and not classify("").known
    assert classify("PENDING").known


def test_needs_controller():
    assert needs_controller(None)  # sacct does not list the job (yet, or any more)
    assert needs_controller("NODE_FAIL") and needs_controller("") and needs_controller("WHATEVER")
    assert not needs_controller("CANCELLED by 0") and not needs_controller("COMPLETED")
    assert not needs_controller("PENDING")


@pytest.mark.parametrize(
    "accounting, controller, outcome",
    [
        # requeued after a node failure / preemption: the controller has it queued again
        ("NODE_FAIL", "PENDING", ACTIVE),
        ("PREEMPTED", "REQUEUED", ACTIVE),
        ("PREEMPTED", "RUNNING", ACTIVE),
        # not requeued: still listed with its final state, or forgotten
        ("NODE_FAIL", "NODE_FAIL", FAILED),
        ("PREEMPTED", None, FAILED),
        # an unknown word: wait while the controller holds the job, whatever it calls it
        ("FROBNICATED", "FROBNICATED", ACTIVE),
        ("FROBNICATED", None, FAILED),
        ("", None, FAILED),
        # the controller's final state is the live view
        ("FROBNICATED", "COMPLETED", SUCCEEDED),
        # not in the accounting yet: the controller decides
        (None, "PENDING", ACTIVE),
        (None, "RUNNING", ACTIVE),
        (None, "COMPLETED", SUCCEEDED),
        (None, "CANCELLED", FAILED),
        (None, "TIMEOUT", FAILED),
        # neither knows it: outcome unknown
        (None, None, Outcome.ENDED_UNKNOWN),
        # a conclusive accounting state is never second-guessed
        ("CANCELLED by 0", "RUNNING", FAILED),
        ("COMPLETED", None, SUCCEEDED),
        ("RUNNING", None, ACTIVE),
        ("REQUEUE_HOLD", None, ACTIVE),
    ],
)
def test_settle(accounting, controller, outcome):
    assert settle(accounting, controller).outcome is outcome


def test_settle_keeps_the_accounting_state_when_the_controller_forgot_the_job():
    verdict = settle("NODE_FAIL", None)
    assert verdict.state == "NODE_FAIL" and "node" in verdict.meaning


def test_parse_status_lines():
    text = "12|CANCELLED by 0\n13|RUNNING\n\nCLUSTER: dlscale-test\n14|\n 15 | COMPLETED \n13|COMPLETED\n"
    assert parse_status_lines(text) == {"12": "CANCELLED by 0", "13": "COMPLETED", "14": "", "15": "COMPLETED"}
    assert parse_status_lines("") == {}


def test_lookup_ids():
    assert lookup_ids("123") == ["123"]
    assert lookup_ids("123_4") == ["123_4", "123"]  # an array task may be listed under its job
    assert lookup_ids("123_[1-3]") == ["123_[1-3]"]


def test_the_poll_interval_grows_up_to_its_cap_and_restarts_when_a_job_ends():
    """--dlscale-slurm-max-seconds-between-status-checks caps the interval (the Slurm tests poll
    every 5 s at most); the default is upstream's 180 s."""
    import asyncio
    from types import SimpleNamespace

    from snakemake_executor_plugin_dlscale_slurm import MAX_POLL_INTERVAL_S, Executor, ExecutorSettings

    assert ExecutorSettings().max_seconds_between_status_checks == MAX_POLL_INTERVAL_S == 180
    executor = object.__new__(Executor)
    executor.workflow = SimpleNamespace(executor_settings=ExecutorSettings(
        init_seconds_before_status_checks=3, max_seconds_between_status_checks=20))
    executor.next_seconds_between_status_checks = 3
    sacct = {"7": "RUNNING"}

    async def accounting():
        return dict(sacct)

    executor._accounting_states = accounting
    executor._report_success = lambda job_info: None
    job = SimpleNamespace(external_jobid="7")

    def check() -> int:
        async def go():
            return [j async for j in executor.check_active_jobs([job])]

        asyncio.run(go())
        return executor.next_seconds_between_status_checks

    assert [check() for _ in range(4)] == [13, 20, 20, 20]
    sacct["7"] = "COMPLETED"
    assert check() == 3


@pytest.mark.parametrize("reason, stuck", [
    ("ReqNodeNotAvail, UnavailableNodes:n1", True),  # a node down or drained
    # Slurm 22.05's squeue, the test cluster's node drained (tests/slurm/test_slurm_pending.py)
    ("Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions", True),
    ("NodeDown", True),
    ("PartitionDown", True),
    ("PartitionTimeLimit", True),
    ("QOSMaxCpuPerJobLimit", True),
    ("DependencyNeverSatisfied", True),
    # positive controls: queueing reasons clear by themselves
    ("Priority", False),
    ("Resources", False),
    ("Dependency", False),
    ("BeginTime", False),
    ("QOSMaxJobsPerUserLimit", False),  # a per-user limit: clears as the user's other jobs end
    ("None", False),
    ("", False),
])
def test_a_pending_reason_is_stuck_only_when_it_does_not_clear_by_itself(reason, stuck):
    assert (states.stuck_pending(reason) is not None) == stuck


def test_the_executor_warns_once_about_a_job_pending_on_an_unavailable_node(monkeypatch):
    """The status check asks squeue for the reasons of pending jobs and warns once per job and reason."""
    import asyncio
    from types import SimpleNamespace

    import snakemake_executor_plugin_dlscale_slurm as plugin
    from snakemake_executor_plugin_dlscale_slurm import Executor, ExecutorSettings

    executor = object.__new__(Executor)
    executor.workflow = SimpleNamespace(executor_settings=ExecutorSettings(init_seconds_before_status_checks=3))
    executor.next_seconds_between_status_checks = 3
    executor._warned, executor._submitted_job_clusters = set(), set()
    executor.status_rate_limiter = asyncio.Lock()
    warnings: list[str] = []
    executor.logger = SimpleNamespace(warning=warnings.append)
    squeue = {"7": "Priority", "8": "ReqNodeNotAvail, UnavailableNodes:n2"}
    calls: list[list[str]] = []

    async def accounting():
        return {"7": "PENDING", "8": "PENDING"}

    async def run(command):
        calls.append(command)
        return 0, "".join(f"{jid}|{reason}\n" for jid, reason in squeue.items()), ""

    executor._accounting_states = accounting
    jobs = [SimpleNamespace(external_jobid=jid, job=SimpleNamespace(is_group=lambda: False, name="train_cell",
                                                                   wildcards=None)) for jid in ("7", "8")]
    monkeypatch.setattr(plugin, "_run", run)  # squeue's answer; tests/slurm/test_slurm_pending.py asks the real one

    async def check():
        return [j async for j in executor.check_active_jobs(jobs)]

    for _ in range(3):
        assert len(asyncio.run(check())) == 2  # both stay active
    assert calls and calls[0][:3] == ["squeue", "--noheader", "--format=%i|%r"] and calls[0][3] == "--jobs=7,8"
    assert len(warnings) == 1, warnings  # once, for job 8 only
    assert warnings[0].startswith("Slurm job 8 (rule train_cell) is pending: ReqNodeNotAvail, UnavailableNodes:n2: "
                                  "a node it needs is not available"), warnings
    assert "sinfo -R" in warnings[0] and "scancel 8" in warnings[0]
