"""Which other cells held CPUs of the node beside a cell (dlscale.neighbours), with real locks."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from dlscale.cpu_claims import claimed_cpus, cpu_lock_dir
from dlscale.neighbours import Neighbours, held_by_others


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSCALE_CPU_LOCK_DIR", str(tmp_path / "locks"))


def _hold(owner, claimed, release, usable):
    os.sched_setaffinity(0, usable)  # forked from a confined parent: every CPU again, like a new cell
    with claimed_cpus(1, timeout_s=30, owner=owner) as cpus:
        claimed.put(cpus)
        release.wait(30)


def test_a_cell_sees_who_holds_the_other_cpus_and_no_one_after_they_leave():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("needs 2 usable CPUs (this machine has 2)")
    claimed, release = multiprocessing.Queue(), multiprocessing.Event()
    other = multiprocessing.Process(target=_hold, args=("cell fashion-mnist n256/c1/r2", claimed, release,
                                                       sorted(os.sched_getaffinity(0))))
    with claimed_cpus(1, owner="cell me") as mine:
        assert held_by_others(cpu_lock_dir(), mine) == set()  # alone so far
        watch = Neighbours(cpu_lock_dir(), mine, period_s=0.05)
        watch.start()
        other.start()
        theirs = claimed.get(timeout=30)
        now = held_by_others(cpu_lock_dir(), mine)
        deadline = time.monotonic() + 30
        while not watch.seen and time.monotonic() < deadline:  # its next look, while the other holds
            time.sleep(0.05)
        release.set()
        other.join(30)
        seen = watch.stop()
        after = held_by_others(cpu_lock_dir(), mine)
    assert theirs != mine
    assert now == {f"cell fashion-mnist n256/c1/r2 (pid {other.pid})"}
    assert seen == sorted(now)  # the watch saw it while it ran...
    assert after == set()  # ...and its released lock no longer counts
    assert held_by_others(cpu_lock_dir(), []) == set()  # our own lock is gone too
