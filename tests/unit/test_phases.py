"""A cell's phases cover its total (issue 13): the arithmetic and the process clock (nothing timed)."""

from __future__ import annotations

import time

import pytest

from dlscale import phases
from dlscale.cell import finish_timings


def test_process_started_at_is_this_process_start():
    started = phases.process_started_at()
    # pytest started this process before the test ran, and not days ago
    assert time.time() - 3600 < started < time.time()


def test_finish_timings_adds_exit_and_total_and_nothing_is_unaccounted():
    now = time.time()
    timings = {phase: 1.0 for phase in phases.PHASES if phase != "cell_exit"}
    # started 12 s ago, 2 s of it queued for CPUs; the last phase ended 0.5 s ago
    timings.update(cpu_wait=2.0, _t0=now - 12.0, _stopped=now - 0.5)
    t = finish_timings({"timings_s": timings})["timings_s"]
    assert "_t0" not in t and "_stopped" not in t
    assert t["cell_exit"] == pytest.approx(0.5, abs=0.1)
    assert t["total"] == pytest.approx(10.0, abs=0.1)
    assert phases.unaccounted(t) == pytest.approx(10.0 - 10.5, abs=0.1)


def test_a_phase_missing_counts_as_unaccounted():
    timings = {phase: 1.0 for phase in phases.PHASES}
    timings["total"] = len(phases.PHASES) + 3.0
    assert phases.unaccounted(timings) == pytest.approx(3.0)
    del timings["driver_start"]
    assert phases.unaccounted(timings) == pytest.approx(4.0)
