"""How busy the machine was around a cell: the benchmark's evidence of noise from other work.

A cell is confined to its CPUs, but other processes on the machine (other users' jobs, tests,
an unconfined daemon) may still run on those CPUs and slow it down. ``Snapshot`` reads the
1-minute load average and the busy time of the cell's CPUs from ``/proc``; ``busy_report``
compares two snapshots: how much of the elapsed time the cell's CPUs were busy (with anything,
the cell's own processes included) and the load averages at both ends.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (idle 3, iowait 4 are idle)


def cpu_busy_ticks(cpus: Sequence[int], stat_text: str = "") -> Dict[int, int]:
    """Busy clock ticks since boot of each CPU in ``cpus`` (from /proc/stat)."""
    if not stat_text:
        try:
            with open("/proc/stat") as handle:
                stat_text = handle.read()
        except OSError:
            return {}
    wanted = {"cpu%d" % cpu: cpu for cpu in cpus}
    out = {}
    for line in stat_text.splitlines():
        parts = line.split()
        if parts and parts[0] in wanted:
            values = [int(v) for v in parts[1:]]
            out[wanted[parts[0]]] = sum(values[i] for i in BUSY_FIELDS if i < len(values))
    return out


def load_averages() -> Tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages (NaN where the system cannot tell)."""
    try:
        return tuple(os.getloadavg())
    except OSError:
        return (float("nan"),) * 3


def load_average() -> float:
    return load_averages()[0]


@dataclass
class Snapshot:
    cpus: List[int]
    at: float = field(default_factory=time.time)
    load: float = field(default_factory=load_average)
    ticks: Dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ticks:
            self.ticks = cpu_busy_ticks(self.cpus)


def busy_report(start: Snapshot, end: Snapshot) -> dict:
    """``cpus_busy_share``: busy time of the cell's CPUs / (elapsed x CPUs), 0..1, anyone's work;
    ``load_avg``: the 1-minute load average at the start and the end of the cell."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    elapsed = max(end.at - start.at, 1e-9)
    busy = sum(end.ticks.get(c, 0) - start.ticks.get(c, 0) for c in start.cpus) / hz
    share = busy / (elapsed * max(1, len(start.cpus))) if start.ticks and end.ticks else float("nan")
    return {"cpus_busy_share": round(min(share, 1.0), 3), "load_avg": [round(start.load, 2), round(end.load, 2)]}
