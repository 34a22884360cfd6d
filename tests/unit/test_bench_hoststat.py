"""dlscale.hoststat: the per-cell evidence of machine load that the benchmark reports."""

from __future__ import annotations

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


def test_a_live_snapshot_reads_this_machine():
    snap = hoststat.Snapshot([0])
    assert snap.ticks.get(0, 0) >= 0 and snap.load >= 0
