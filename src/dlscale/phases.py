"""The phases of a cell's wall time, in order, and the clock they are measured on.

Every second of a cell's ``timings_s.total`` belongs to one phase (issue 13, "nothing
unaccounted"): the cell's own start-up (interpreter start, imports, CPU claim, scratch) and exit
(after the last phase until its metrics are written) are phases of their own, as are the
driver's start (spark-submit's launcher JVM, the driver JVM and Python, the trainer's imports),
its model set-up and its stop (the versions it reports, ``sc.stop``, the driver JVM's exit).
``cpu_wait`` (queued behind other cells for free CPUs) is not the cell's time and not in total.
"""

from __future__ import annotations

import os
import time
from typing import Mapping

# In the order they happen. A backend without a phase records it as 0 (PyTorch: no cluster).
PHASES = (
    "cell_start", "cluster_start", "driver_start", "context_start", "data_load", "model_setup",
    "train", "evaluate", "driver_stop", "cluster_stop", "cell_exit",
)
TOLERANCE_S = 1.0  # what the phases may leave out of the total (issue 13)


def process_started_at() -> float:
    """When this process started (``time.time()`` scale), from the kernel's start time in
    /proc/self/stat (clock ticks since boot): the interpreter's own start and the imports before
    any line of the cell runs count too. Falls back to now where /proc is missing."""
    try:
        with open("/proc/self/stat") as handle:
            # after the command name (in parentheses, may hold spaces): field 22 is starttime
            fields = handle.read().rsplit(")", 1)[1].split()
        started_since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started_since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def unaccounted(timings: Mapping[str, float]) -> float:
    """Seconds of ``total`` that no phase covers (negative: phases overlap or double-count)."""
    return timings["total"] - sum(timings.get(phase, 0.0) for phase in PHASES)
