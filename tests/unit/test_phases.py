"""A cell's phases cover its total (issue 13): the arithmetic and the process clock (nothing timed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from dlscale import phases
from dlscale.cell import finish_timings

SRC = os.path.dirname(os.path.dirname(phases.__file__))


def test_process_started_at_is_the_process_start_not_the_call():
    """Event order: a child started after ``before`` reports a start before its first line ran (the
    fallback, "now", would be after it), and this process (pytest) started before the child."""
    before = time.time()
    child = subprocess.run([sys.executable, "-c", "import time; first_line = time.time()\n"
                            "from dlscale import phases; print(phases.process_started_at(), first_line)"],
                           check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC})
    started, first_line = map(float, child.stdout.split())
    tick = 1.0 / os.sysconf("SC_CLK_TCK")  # the kernel's start time is in clock ticks
    assert before - 2 * tick <= started <= first_line, (before, started, first_line)
    assert phases.process_started_at() < started


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
