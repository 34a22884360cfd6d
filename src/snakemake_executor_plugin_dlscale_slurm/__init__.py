"""Snakemake executor plugin ``dlscale-slurm``: snakemake-executor-plugin-slurm 2.8.0 whose status
check always ends.

Use it as ``executor: dlscale-slurm`` (slurm/config.yaml) or ``--executor dlscale-slurm``. It is
the upstream ``slurm`` executor (job submission, sbatch options, resources, cancellation, logs,
and its settings, spelt ``--dlscale-slurm-<name>`` instead of ``--slurm-<name>``), with the
job status check replaced:

- upstream compares sacct's state to exact words, and sacct prints ``CANCELLED by <uid>`` for a
  ``scancel``led job, so upstream yields that job as running forever and Snakemake never ends;
- here every state maps to succeeded / failed / active with `states.classify` (the table is in
  that module's docstring); states after which Slurm may requeue the job (NODE_FAIL,
  PREEMPTED, ...), unknown words, and jobs sacct does not list are settled with the
  controller's view (``squeue``), so that a requeued job is waited for and a gone one is not;
- a failure names the Slurm job id, its state and what it means, the rule and its wildcards
  (which cell), the exit codes of its steps and its Slurm log;
- a failed status query keeps the jobs active and says why (upstream drops them silently);
- a job pending for a reason that does not clear by itself (a node it needs is down or
  drained, ...) gets one warning naming the reason and the ways out; it is still waited for;
- the wait between two checks ends as soon as Snakemake shuts down, so Ctrl-C does not wait
  for the rest of a poll interval of up to 180 s.

The package sits in this repository's ``src/`` next to ``dlscale``; ``pip install -e .`` (in
``envs/bootstrap.sh driver``) makes it importable, and Snakemake finds executor plugins by
their module name prefix ``snakemake_executor_plugin_``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shlex
import signal
import sys
import threading
import time
from typing import AsyncGenerator, Dict, List, Optional, Tuple

from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm import ExecutorSettings as SlurmExecutorSettings
from snakemake_executor_plugin_slurm import common_settings
from snakemake_executor_plugin_slurm.job_status_query import (
    is_query_tool_available,
    query_job_status_sacct,
    query_job_status_squeue,
)
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo

from dlscale.resources import default_slurm_extra_warning

from .states import (Outcome, Verdict, lookup_ids, needs_controller, parse_status_lines, settle,
                     state_word, stuck_pending)

__all__ = ["Executor", "ExecutorSettings", "common_settings"]

PLUGIN = "dlscale-slurm"
QUERY_TIMEOUT_S = 60  # one sacct/squeue call
MAX_POLL_INTERVAL_S = 180  # as upstream: the interval grows by 10 s per check while nothing ends


# Upstream's settings, and the cap of the poll interval (upstream's is fixed at 180 s). Made with
# make_dataclass: snakemake builds the option from the field's type, which must be a type here, not
# the string a class body gives under `from __future__ import annotations`.
ExecutorSettings = dataclasses.make_dataclass(
    "ExecutorSettings",
    [
        (
            "max_seconds_between_status_checks",
            Optional[int],
            dataclasses.field(
                default=MAX_POLL_INTERVAL_S,
                metadata={
                    "help": "The longest wait between two status checks: the interval grows by "
                    "10 s per check while no job ends, up to this (default 180 s, as upstream), "
                    "so an ended job is seen at most this long after its end.",
                    "env_var": False,
                    "required": False,
                },
            ),
        )
    ],
    bases=(SlurmExecutorSettings,),
)


def describe_job(job) -> str:
    """``rule train_cell (dataset=..., cores=2, rep=1)``: which cell a Slurm job is."""
    if job.is_group():
        rules = sorted({j.rule.name for j in job.jobs})
        return f"group {job.name} (rules {', '.join(rules)})"
    wildcards = dict(job.wildcards.items()) if job.wildcards else {}
    shown = ", ".join(f"{key}={value}" for key, value in wildcards.items())
    return f"rule {job.name}" + (f" ({shown})" if shown else "")


class Executor(SlurmExecutor):
    def __post_init__(self, test_mode: bool = False):
        super().__post_init__(test_mode)
        self._warned: set = set()  # (job id, what) pairs already warned about
        self._sigterm_previous = None  # Snakemake's handler, while ours is installed
        # Options of the upstream executor are still accepted by the command line (that plugin
        # is installed too), but they configure an executor that is not running.
        stray = sorted(
            {
                arg.split("=", 1)[0]
                for arg in sys.argv[1:]
                if arg.startswith("--slurm-") and not arg.startswith("--slurm-jobstep-")
            }
        )
        if stray:
            self.logger.warning(
                f"{', '.join(stray)}: option(s) of the executor 'slurm', without effect on "
                f"the executor '{PLUGIN}' of this run; its options are spelt --{PLUGIN}-<name> "
                f"(e.g. --{PLUGIN}-init-seconds-before-status-checks)."
            )
        # The cell rules set slurm_extra themselves (the walltime warning), which replaces one
        # given in default-resources: say so rather than drop it silently.
        warning = default_slurm_extra_warning(self.workflow.resource_settings.default_resources)
        if warning:
            self.logger.warning(warning)

    # --- Ctrl-C and SIGTERM ---------------------------------------------------------------

    def run_jobs(self, jobs):
        self._install_sigterm_handler()
        super().run_jobs(jobs)

    def _install_sigterm_handler(self):
        """SIGTERM (``kill``, and what Slurm sends a head job on scancel or at its walltime) does
        what Ctrl-C does: Snakemake cancels its Slurm jobs and exits. Snakemake's own handler
        would wait for the running jobs to end, which for a study of Slurm jobs can take
        hours, and a head job is SIGKILLed after KillWait anyway, leaving its jobs behind.
        Installed at the first submission: Snakemake sets its handler when its scheduler starts."""
        if self._sigterm_previous is not None or not _in_main_thread():
            return

        def interrupt(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cancellation must not be cut short
            self.logger.warning("SIGTERM: cancelling the Slurm jobs of this run, as on Ctrl-C.")
            raise KeyboardInterrupt

        self._sigterm_previous = signal.signal(signal.SIGTERM, interrupt)

    def _restore_sigterm_handler(self):
        if self._sigterm_previous is not None and _in_main_thread():
            signal.signal(signal.SIGTERM, self._sigterm_previous)
            self._sigterm_previous = None

    def shutdown(self):
        # Once the jobs are done (or cancelled), SIGTERM is Snakemake's again.
        self._restore_sigterm_handler()
        super().shutdown()

    def cancel(self):
        """Ctrl-C (and SIGTERM, above): scancel every job of the run. Upstream submits in a
        thread pool and cancels the jobs it knows at that moment, then waits for the pool, so
        a job whose sbatch was still running would be submitted after the scancel and left
        running: finish (or drop) the submissions first. A SIGTERM now must not cut the
        cancellation short."""
        if _in_main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._sigterm_previous = None
        self._job_submission_executor.shutdown(wait=True, cancel_futures=True)
        super().cancel()

    async def sleep(self):
        """Wait for the next status check, but no longer than Snakemake runs: shutdown() joins
        the thread that waits here."""
        deadline = time.monotonic() + self.next_seconds_between_status_checks
        while self.wait and time.monotonic() < deadline:
            await asyncio.sleep(min(1.0, deadline - time.monotonic()))

    # --- status check ---------------------------------------------------------------------

    async def check_active_jobs(
        self, active_jobs: List[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        """Report every job that ended (success or error) and yield those still active."""
        initial_interval = self.workflow.executor_settings.init_seconds_before_status_checks
        if not active_jobs:
            self.next_seconds_between_status_checks = initial_interval
            return

        accounting = await self._accounting_states()
        if accounting is None:  # the query failed: nothing is known, ask again next time
            for job_info in active_jobs:
                yield job_info
            return

        accounting_state = {j.external_jobid: _find(accounting, j.external_jobid) for j in active_jobs}
        unsure = [jid for jid, state in accounting_state.items() if needs_controller(state)]
        controller = await self._controller_states(unsure) if unsure else {}

        any_ended = False
        pending = []  # jobs still queued: their reasons are looked at below
        for job_info in active_jobs:
            jid = job_info.external_jobid
            if jid in unsure and controller is None:  # squeue failed: ask again next time
                yield job_info
                continue
            verdict = settle(accounting_state[jid], _find(controller or {}, jid))
            if verdict.outcome is Outcome.ACTIVE:
                self._warn_if_stuck(job_info, verdict)
                if state_word(verdict.state) == "PENDING":
                    pending.append(job_info)
                yield job_info
                continue
            any_ended = True
            if verdict.outcome is Outcome.SUCCEEDED:
                self._report_success(job_info)
            elif verdict.outcome is Outcome.ENDED_UNKNOWN:
                self.logger.warning(
                    f"Slurm job {jid} ({describe_job(job_info.job)}) is {verdict.meaning}; "
                    "Snakemake's check of its output files decides whether it succeeded."
                )
                self._report_success(job_info)
            else:
                await self._report_failure(job_info, verdict)

        if pending:
            await self._warn_if_pending_for_ever(pending)

        if any_ended:
            self.next_seconds_between_status_checks = initial_interval
        else:
            cap = self.workflow.executor_settings.max_seconds_between_status_checks or MAX_POLL_INTERVAL_S
            self.next_seconds_between_status_checks = min(
                self.next_seconds_between_status_checks + 10, max(cap, initial_interval)
            )

    def _report_success(self, job_info: SubmittedJobInfo):
        self.report_job_success(job_info)
        logfile = job_info.aux.get("slurm_logfile")
        if logfile is not None and not self.workflow.executor_settings.keep_successful_logs:
            try:
                logfile.unlink(missing_ok=True)
            except OSError as e:
                self.logger.warning(f"Could not remove the Slurm log {logfile}: {e}")

    async def _report_failure(self, job_info: SubmittedJobInfo, verdict: Verdict):
        jid = job_info.external_jobid
        steps, nodes = await self._job_steps(jid)
        if verdict.state.startswith("NODE_FAIL") and nodes:
            self._failed_nodes.add(nodes)  # upstream's --exclude for later submissions
        logfile = job_info.aux.get("slurm_logfile")
        msg = (
            f"Slurm job {jid} of {describe_job(job_info.job)} ended in state "
            f"'{verdict.state}': {verdict.meaning}."
            + (f" Steps (state, exit code:signal): {steps}." if steps else "")
            + (f" Slurm log: {logfile}." if logfile else "")
            + "\n"
        )
        self.report_job_error(job_info, msg=msg, aux_logs=[str(logfile)] if logfile else [])

    def _warn_if_stuck(self, job_info: SubmittedJobInfo, verdict: Verdict):
        """Once per job and state: a held job, or a state this plugin does not know."""
        if not (verdict.held or not verdict.known):
            return
        key = (job_info.external_jobid, verdict.state)
        if key in self._warned:
            return
        self._warned.add(key)
        jid = job_info.external_jobid
        what = (
            f"{verdict.meaning}: `scontrol release {jid}` lets it run, `scancel {jid}` fails it"
            if verdict.held
            else f"{verdict.meaning}; waiting while Slurm's controller still holds it"
        )
        self.logger.warning(f"Slurm job {jid} ({describe_job(job_info.job)}) is {what}.")

    async def _warn_if_pending_for_ever(self, pending: List[SubmittedJobInfo]):
        """Once per job and reason: a queued job whose reason (squeue %r) will not clear by itself,
        e.g. a node it needs is down or drained (`states.stuck_pending`). Upstream says nothing
        and Snakemake waits; the job still runs if the reason clears (the node comes back)."""
        # One squeue per status check while jobs are queued: the controller has the live reason
        # (upstream's sacct query asks for states only).
        command = self._squeue_command("%i|%r", [j.external_jobid for j in pending])
        async with self.status_rate_limiter:
            returncode, out, _ = await _run(command)
        if returncode != 0:  # a job that just started or ended; the next check asks again
            return
        reasons = parse_status_lines(out)
        for job_info in pending:
            jid = job_info.external_jobid
            reason = _find(reasons, jid) or ""
            meaning = stuck_pending(reason)
            key = (jid, "pending: " + reason.split(",")[0])
            if meaning is None or key in self._warned:
                continue
            self._warned.add(key)
            self.logger.warning(
                f"Slurm job {jid} ({describe_job(job_info.job)}) is pending: {reason}: {meaning}. "
                f"It waits until that changes, which may need an administrator: `sinfo -R` lists "
                f"down and drained nodes and why, `scontrol show job {jid}` the job; `scancel {jid}` "
                "fails it (rerunning the workflow later submits the cell again)."
            )

    # --- Slurm queries ----------------------------------------------------------------------

    def _use_sacct(self) -> bool:
        return self.get_status_command() != "squeue" and is_query_tool_available("sacct")

    async def _accounting_states(self) -> Optional[Dict[str, str]]:
        """{job id: state} of the jobs of this run (upstream's sacct query, or its squeue one
        with ``--dlscale-slurm-status-command squeue``); None when every attempt failed."""
        command = (
            query_job_status_sacct(self.run_uuid)
            if self._use_sacct()
            else query_job_status_squeue(self.run_uuid)
        )
        attempts = max(1, int(self.workflow.executor_settings.status_attempts or 1))
        error = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(2**attempt, 10))
            async with self.status_rate_limiter:
                returncode, out, err = await _run(shlex.split(command))
            if returncode == 0:
                return parse_status_lines(out)
            error = err.strip() or f"exit code {returncode}"
        self.logger.warning(
            f"The Slurm status query failed {attempts} time(s) ({error}): `{command}`. "
            "The jobs are kept as active and queried again at the next check."
        )
        return None

    async def _controller_states(self, job_ids: List[str]) -> Optional[Dict[str, str]]:
        """{job id: state} as slurmctld has them (it forgets a job MinJobAge after it ends);
        a job it does not list is not in the result. None when squeue failed."""
        command = self._squeue_command("%i|%T", job_ids, "--states=all")
        async with self.status_rate_limiter:
            returncode, out, err = await _run(command)
        if returncode == 0:
            return parse_status_lines(out)
        if "Invalid job id" in err:  # squeue's answer when it knows none of one or more ids
            return {}
        self.logger.warning(f"squeue failed ({err.strip() or returncode}): `{shlex.join(command)}`.")
        return None

    def _squeue_command(self, fields: str, job_ids: List[str], *options: str) -> List[str]:
        """``squeue`` printing ``fields`` for the jobs (and, for an array task, its array job)."""
        ids = sorted({i for jid in job_ids for i in lookup_ids(jid)})
        command = ["squeue", "--noheader", *options, f"--format={fields}", f"--jobs={','.join(ids)}"]
        if self._submitted_job_clusters:
            command.append("--clusters=all")
        return command

    async def _job_steps(self, job_id: str) -> Tuple[str, str]:
        """The job's and its steps' ``id state exitcode`` for a failure message, and the
        allocation's node list ('' without sacct)."""
        if not is_query_tool_available("sacct"):
            return "", ""
        base = lookup_ids(job_id)[-1]
        returncode, out, _ = await _run(
            ["sacct", "--noheader", "--parsable2", f"--jobs={base}", "--format=JobID,State,ExitCode,NodeList"]
        )
        if returncode != 0:
            return "", ""
        rows = [line.split("|") for line in out.splitlines() if line.count("|") >= 3]
        steps = "; ".join(f"{r[0]} {r[1]} {r[2]}" for r in rows[:8])
        nodes = next((r[3] for r in rows if r[0] == base), "")
        return steps, nodes


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _find(states: Dict[str, str], external_jobid: str) -> Optional[str]:
    return next((states[i] for i in lookup_ids(external_jobid) if i in states), None)


async def _run(command: List[str]) -> Tuple[Optional[int], str, str]:
    """Run a Slurm command: (exit code, stdout, stderr); exit code None if it did not run or
    took longer than QUERY_TIMEOUT_S."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as e:
        return None, "", str(e)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=QUERY_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return None, "", f"no answer within {QUERY_TIMEOUT_S} s"
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
