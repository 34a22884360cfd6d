"""What a Slurm job state means for Snakemake: finished ok, failed, or still active.

Pure functions, no Slurm needed (unit-tested in tests/unit/test_slurm_status.py). The executor
(`__init__.py`) asks ``sacct`` for the state of every job of the run, maps it with `classify`,
and for the states below marked *ask the controller* also asks ``squeue`` (slurmctld, which
keeps a job for MinJobAge after it ends) and decides with `settle`.

Only the first word of a state counts: sacct prints ``CANCELLED by 0`` (or ``by <uid>``) for a
``scancel``led job, which snakemake-executor-plugin-slurm 2.8.0 compares to the exact word
``CANCELLED`` and so waits for forever.

======================  ============  ========================================================
state                   outcome       why
======================  ============  ========================================================
COMPLETED               succeeded     exit code 0 on every node; Snakemake then checks the
                                      job's output files
CANCELLED [by <uid>]    failed        ``scancel`` by that user id (0: root, an administrator
                                      or Slurm itself); a cancelled job never comes back
FAILED                  failed        non-zero exit code (or another failure of the batch step)
TIMEOUT                 failed        walltime reached (a BigDL cell had its SIGUSR1 warning
                                      120 s before and tore its cluster down)
OUT_OF_MEMORY           failed        the job's memory limit was exceeded
DEADLINE                failed        it could not end before its ``--deadline``
BOOT_FAIL               failed        its nodes failed to boot; Slurm does not requeue it
NODE_FAIL               failed, ask   a node failed. A requeueable job (``JobRequeue=1``, the
                        the           default, or ``--requeue``) is put back in the queue by
                        controller    Slurm with the same id: the controller then lists it
                                      PENDING and it stays active; otherwise it failed
PREEMPTED               failed, ask   a higher-priority job took its resources. With
                        the           PreemptMode=REQUEUE Slurm requeues it (same id, listed
                        controller    PENDING by the controller: active); with CANCEL, or a
                                      job that may not be requeued, it never comes back:
                                      failed. (PreemptMode=SUSPEND shows as SUSPENDED.)
LAUNCH_FAILED,          failed, ask   its launch or node set-up failed; Slurm requeues such
RECONFIG_FAIL           the           a job when it can (then PENDING: active)
                        controller
REVOKED                 failed, ask   federation: this cluster's sibling was revoked because
                        the           another cluster started the job; active while the
                        controller    controller still holds it
PENDING, RUNNING,       active        queued, running, or on the way in or out
COMPLETING, CONFIGURING,
POWER_UP_NODE,
EXPEDITING, SIGNALING,
STAGE_OUT, UPDATE_DB,
RESIZING
REQUEUED, REQUEUE_FED   active        being requeued: it comes back PENDING with the same id
SUSPENDED, STOPPED      active        it keeps its allocation and continues when resumed
REQUEUE_HOLD,           active, held  requeued or parked in a held state: it runs only after
SPECIAL_EXIT,                         ``scontrol release <id>``; the executor warns once and
RESV_DEL_HOLD                         names both ways out (release, or ``scancel <id>``, which
                                      then reads CANCELLED: failed)
any other word, or      failed, ask   not a state this module knows: active while the
empty                   the           controller still holds the job (whatever it calls its
                        controller    state), failed once the controller has forgotten it
======================  ============  ========================================================

A job that stays PENDING is waited for; when its pending reason (squeue %r) is one that does not
clear by itself, e.g. a node it needs is down or drained (`stuck_pending`), the executor warns once.

*Ask the controller* (`settle`): the job is active while ``squeue`` lists it in an active state
or in a state this module does not know; when it lists it in a final state, that state decides
(the controller's view is the live one); when it no longer knows the job, the accounting's
verdict stands. A job the accounting does not list (not recorded yet, or lost) is decided the
same way by the controller alone, and when neither knows it any more its outcome is unknown
(`Outcome.ENDED_UNKNOWN`): the executor then lets Snakemake's check of the job's output files
decide, and says so in a warning.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict, Optional


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ACTIVE = "active"
    ENDED_UNKNOWN = "ended, outcome unknown"  # only from `settle`: neither sacct nor squeue knows it


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    state: str  # as Slurm printed it, e.g. "CANCELLED by 0"
    meaning: str  # one clause for the user, e.g. "cancelled by user id 0 (scancel)"
    ask_controller: bool = False  # the outcome holds only if slurmctld does not list the job active
    held: bool = False  # active, but runs only after `scontrol release`
    known: bool = True  # Slurm state word this module knows


_SUCCEEDED = {"COMPLETED": "completed with exit code 0"}
_FAILED = {
    "CANCELLED": "cancelled (scancel, by a user or an administrator, or by Slurm)",
    "FAILED": "failed: non-zero exit code or a failure of the batch step",
    "TIMEOUT": "killed at its walltime (runtime)",
    "OUT_OF_MEMORY": "killed for exceeding its memory (mem_mb)",
    "DEADLINE": "could not end before its deadline",
    "BOOT_FAIL": "its nodes failed to boot",
}
_FAILED_UNLESS_REQUEUED = {
    "NODE_FAIL": "a node it ran on failed",
    "PREEMPTED": "preempted by a higher-priority job",
    "LAUNCH_FAILED": "its launch failed",
    "RECONFIG_FAIL": "its nodes could not be configured",
    "REVOKED": "revoked (federation: another cluster started it)",
}
_ACTIVE = {
    "PENDING": "queued",
    "RUNNING": "running",
    "COMPLETING": "completing",
    "CONFIGURING": "waiting for its nodes to boot",
    "POWER_UP_NODE": "waiting for its nodes to power up",
    "EXPEDITING": "queued, expedited",
    "SIGNALING": "being signalled",
    "STAGE_OUT": "staging out data",
    "UPDATE_DB": "being recorded in the accounting",
    "RESIZING": "changing size",
    "REQUEUED": "being requeued (it comes back with the same id)",
    "REQUEUE_FED": "being requeued by the federation",
    "SUSPENDED": "suspended (it continues when resumed)",
    "STOPPED": "stopped with SIGSTOP (it continues when resumed)",
}
_HELD = {
    "REQUEUE_HOLD": "requeued and held",
    "SPECIAL_EXIT": "requeued and held after a special exit",
    "RESV_DEL_HOLD": "held: its reservation was deleted",
}
KNOWN_STATES = frozenset({**_SUCCEEDED, **_FAILED, **_FAILED_UNLESS_REQUEUED, **_ACTIVE, **_HELD})


def state_word(state: str) -> str:
    """The state's first word: ``CANCELLED by 0`` -> ``CANCELLED`` (``+``: sacct's truncation)."""
    words = (state or "").split()
    return words[0].rstrip("+").upper() if words else ""


def classify(state: str) -> Verdict:
    """The verdict on one state as sacct (or squeue) prints it."""
    state = (state or "").strip()
    word = state_word(state)
    if word in _SUCCEEDED:
        return Verdict(Outcome.SUCCEEDED, state, _SUCCEEDED[word])
    if word == "CANCELLED" and state.split()[1:2] == ["by"] and len(state.split()) > 2:
        return Verdict(Outcome.FAILED, state, f"cancelled by user id {state.split()[2]} (scancel)")
    if word in _FAILED:
        return Verdict(Outcome.FAILED, state, _FAILED[word])
    if word in _FAILED_UNLESS_REQUEUED:
        return Verdict(Outcome.FAILED, state, _FAILED_UNLESS_REQUEUED[word], ask_controller=True)
    if word in _ACTIVE:
        return Verdict(Outcome.ACTIVE, state, _ACTIVE[word])
    if word in _HELD:
        return Verdict(
            Outcome.ACTIVE,
            state,
            f"{_HELD[word]}: it runs only after `scontrol release`",
            held=True,
        )
    meaning = f"in a state this plugin does not know ({state!r})" if word else "without a state"
    return Verdict(Outcome.FAILED, state, meaning, ask_controller=True, known=False)


def needs_controller(accounting_state: Optional[str]) -> bool:
    """Whether `settle` needs the controller's view: the accounting has no state for the job,
    or one that holds only if Slurm did not requeue (or still run) the job."""
    return accounting_state is None or classify(accounting_state).ask_controller


def settle(accounting_state: Optional[str], controller_state: Optional[str]) -> Verdict:
    """The verdict from the accounting's state (sacct; None: it does not list the job) and the
    controller's (squeue; None: it no longer knows the job). See the module docstring."""
    verdict = classify(accounting_state) if accounting_state is not None else None
    if verdict is not None and not verdict.ask_controller:
        return verdict
    if controller_state is None:
        if verdict is not None:
            return verdict
        return Verdict(
            Outcome.ENDED_UNKNOWN,
            "",
            "no longer known to Slurm (neither sacct nor squeue lists it): its outcome is unknown",
        )
    live = classify(controller_state)
    if live.outcome is Outcome.ACTIVE or not live.known:
        return Verdict(
            Outcome.ACTIVE,
            controller_state,
            live.meaning if live.known else f"listed by the controller as {controller_state!r}",
            held=live.held,
            known=live.known,
        )
    return live  # a final state the controller shows is the live view: it decides


# Why a job pends (squeue's %r), when what it waits for does not come by itself: an administrator
# (or the user, with scancel and other resources) must act. Queueing reasons (Priority, Resources,
# Dependency, BeginTime, ...) are not here. From squeue(1), JOB REASON CODES.
_STUCK_PENDING = {
    "ReqNodeNotAvail": "a node it needs is not available (down, drained, reserved or not responding)",
    "NodeDown": "a node it needs is down",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "PartitionNodeLimit": (
        "its node count is outside its partition's limits, or the nodes it needs are down or drained"
    ),
    "PartitionTimeLimit": "its time limit exceeds its partition's",
    "BadConstraints": "its constraints cannot be satisfied",
    "InvalidAccount": "its account is invalid",
    "InvalidQOS": "its QOS is invalid",
    "DependencyNeverSatisfied": "a job it depends on failed",
}


# Slurm 22.05's squeue prints this description instead of ReqNodeNotAvail for a job that asked for
# no particular node (seen here with the test cluster's only node drained).
_NODES_UNAVAILABLE_TEXT = "Nodes required for job are DOWN, DRAINED"


def stuck_pending(reason: str) -> Optional[str]:
    """What a pending job's ``reason`` (squeue %r, e.g. ``ReqNodeNotAvail, UnavailableNodes:n1``)
    means when the job may wait for ever without someone acting; None for a queueing reason."""
    if (reason or "").startswith(_NODES_UNAVAILABLE_TEXT):
        return _STUCK_PENDING["ReqNodeNotAvail"]
    word = (reason or "").replace(",", " ").split()[0] if (reason or "").strip() else ""
    if word in _STUCK_PENDING:
        return _STUCK_PENDING[word]
    if "PerJob" in word and word.endswith("Limit"):  # e.g. QOSMaxCpuPerJobLimit: the job asks too much
        return "it asks for more than a per-job limit of its QOS or association allows"
    return None


def parse_status_lines(text: str) -> Dict[str, str]:
    """``<job id>|<state>`` lines (sacct --parsable2, squeue --format=%i|%T) -> {id: state}.
    Lines without ``|`` (e.g. squeue's ``CLUSTER: name`` headers) are skipped; a job listed
    twice keeps its last state."""
    states: Dict[str, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job_id, state = (part.strip() for part in line.split("|")[:2])
        if job_id:
            states[job_id] = state
    return states


def lookup_ids(external_jobid: str) -> list:
    """Ids to look a job up by: an array task ``<id>_<task>`` may be listed under ``<id>``."""
    ids = [external_jobid]
    parent, _, task = external_jobid.partition("_")
    if task and parent.isdigit() and task.isdigit():
        ids.append(parent)
    return ids
