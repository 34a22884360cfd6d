"""The cell's CPU claims, atomic writes and batch arithmetic (no Spark needed)."""

from __future__ import annotations

import json
import multiprocessing
import os
import argparse
import queue as queue_module

import pytest

from dlscale import cell


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSCALE_CPU_LOCK_DIR", str(tmp_path / "locks"))


def _claim_and_report(count, queue, hold_s):
    import time

    with cell.claimed_cpus(count, timeout_s=30) as cpus:
        queue.put((cpus, sorted(os.sched_getaffinity(0))))
        time.sleep(hold_s)


def test_claim_confines_the_process_and_restores_afterwards():
    before = sorted(os.sched_getaffinity(0))
    with cell.claimed_cpus(1) as cpus:
        assert len(cpus) == 1
        assert sorted(os.sched_getaffinity(0)) == cpus
    assert sorted(os.sched_getaffinity(0)) == before


def test_concurrent_claims_get_disjoint_cpus():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable CPUs")
    queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_claim_and_report, args=(1, queue, 2.0)) for _ in range(2)]
    for proc in procs:
        proc.start()
    seen = [queue.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(30)
    (cpus_a, affinity_a), (cpus_b, affinity_b) = seen
    assert cpus_a == affinity_a and cpus_b == affinity_b
    assert not set(cpus_a) & set(cpus_b)


def test_claim_waits_until_cpus_are_released():
    usable = len(os.sched_getaffinity(0))
    queue = multiprocessing.Queue()
    holder = multiprocessing.Process(target=_claim_and_report, args=(usable, queue, 1.5))
    holder.start()
    queue.get(timeout=30)  # the holder has every CPU now
    waiter = multiprocessing.Process(target=_claim_and_report, args=(1, queue, 0))
    waiter.start()
    with pytest.raises(queue_module.Empty):
        queue.get(timeout=0.8)  # still blocked while the holder runs
    cpus, _ = queue.get(timeout=30)
    assert len(cpus) == 1
    holder.join(30)
    waiter.join(30)


def test_more_cores_than_cpus_claims_every_usable_cpu():
    usable = sorted(os.sched_getaffinity(0))
    with cell.claimed_cpus(len(usable) + 3) as cpus:
        assert cpus == usable


def test_write_json_atomically_replaces_whole_file(tmp_path):
    target = tmp_path / "deep" / "metrics.json"
    cell.write_json_atomically(str(target), {"a": 1})
    cell.write_json_atomically(str(target), {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("scaling,cores,expected", [("strong", 4, 64), ("weak", 4, 256), ("weak", 1, 64)])
def test_global_batch(scaling, cores, expected):
    args = argparse.Namespace(scaling=scaling, cores=cores, batch_size=64)
    assert cell.global_batch(args) == expected
