"""dlscale.hoststat: the per-cell evidence of machine load that the benchmark reports."""

from __future__ import annotations

import os

from dlscale import hoststat

STAT_T0 = "cpu  1 1 1 1 1 1 1 1 0 0\ncpu0 100 0 50 1000 10 5 5 0 0 0\ncpu1 200 0 0 500 0 0 0 0 0 0\n"
STAT_T1 = "cpu  1 1 1 1 1 1 1 1 0 0\ncpu0 150 0 60 1030 20 5 5 0 0 0\ncpu1 300 0 0 500 0 0 0 0 0 0\n"


def test_busy_ticks_count_user_system_irq_not_idle_or_iowait():
    assert hoststat.cpu_busy_ticks([0, 1], STAT_T0) == {0: 160, 1: 200}
    assert hoststat.cpu_busy_ticks([1], STAT_T1) == {1: 300}


def test_busy_share_of_the_cells_cpus(monkeypatch):
    monkeypatch.setattr(hoststat.os, "sysconf", lambda name: 100)
    start = hoststat.Snapshot([0], at=0.0, load=1.5, ticks=hoststat.cpu_busy_ticks([0], STAT_T0))
    end = hoststat.Snapshot([0], at=1.0, load=2.25, ticks=hoststat.cpu_busy_ticks([0], STAT_T1))
    report = hoststat.busy_report(start, end)
    assert report == {"cpus_busy_share": 0.6, "load_avg": [1.5, 2.25]}  # 60 ticks of 100 in 1 s


def _proc_stat_busy(cpu: int) -> int:
    """Busy ticks of ``cpu`` read straight from /proc/stat (user nice system irq softirq steal)."""
    with open("/proc/stat") as handle:
        for line in handle:
            fields = line.split()
            if fields[0] == f"cpu{cpu}":
                values = [int(v) for v in fields[1:]]
                return sum(values[i] for i in (0, 1, 2, 5, 6, 7))
    raise AssertionError(f"cpu{cpu} not in /proc/stat")


def _proc_loadavg() -> float:
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def test_a_live_snapshot_reads_this_machine():
    """The live numbers are this machine's: each CPU's busy ticks lie between two reads of
    /proc/stat made around the snapshot (ticks only grow, and the whole-machine ``cpu`` line or
    another CPU's line would fall outside), and the load is the 1-minute figure of /proc/loadavg
    read just before or just after, to its two decimals (it changes at most once between the two reads)."""
    cpus = sorted(os.sched_getaffinity(0))
    before = {cpu: _proc_stat_busy(cpu) for cpu in cpus}
    load_before = _proc_loadavg()
    snap = hoststat.Snapshot(cpus)
    load_after = _proc_loadavg()
    after = {cpu: _proc_stat_busy(cpu) for cpu in cpus}
    assert sorted(snap.ticks) == cpus
    for cpu in cpus:
        assert before[cpu] <= snap.ticks[cpu] <= after[cpu], (cpu, before[cpu], snap.ticks[cpu], after[cpu])
    # /proc/loadavg prints two decimals of the kernel's fixed-point figure, which the snapshot
    # reads whole (os.getloadavg): CI saw 0.43505859375 printed as 0.43, so within 0.01, not rounded.
    assert min(abs(snap.load - load) for load in (load_before, load_after)) < 0.01, (load_before, snap.load, load_after)


def test_busy_ticks_of_a_cpu_grow_while_this_process_spins_on_it():
    """Positive control of the live reading: confined to one CPU, spinning until /proc/stat says
    that CPU's busy count moved, the snapshots taken around the spin see it move too."""
    cpu = min(os.sched_getaffinity(0))
    usable = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        start = hoststat.Snapshot([cpu])
        target = _proc_stat_busy(cpu)
        spins = 0
        while _proc_stat_busy(cpu) <= target:  # the event is the counter moving, not a duration
            spins += 1
        end = hoststat.Snapshot([cpu])
    finally:
        os.sched_setaffinity(0, usable)
    assert end.ticks[cpu] > start.ticks[cpu], (start.ticks, end.ticks, spins)
    report = hoststat.busy_report(start, end)
    assert 0 < report["cpus_busy_share"] <= 1.0, report


def test_load_averages_are_nan_where_the_system_cannot_tell(monkeypatch):
    monkeypatch.setattr(hoststat.os, "getloadavg", lambda: (0.5, 0.25, 0.125))
    assert hoststat.load_averages() == (0.5, 0.25, 0.125) and hoststat.load_average() == 0.5

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(hoststat.os, "getloadavg", unavailable)
    assert all(value != value for value in hoststat.load_averages())  # NaN
