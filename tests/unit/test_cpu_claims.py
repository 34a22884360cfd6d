"""CPU claims: disjoint between concurrent claims, waiting for released CPUs, confining the
process, in a lock directory nobody else may write (no Spark needed)."""

from __future__ import annotations

import multiprocessing
import os
import stat

import pytest

from dlscale.cell_process import CellError
from dlscale.cpu_claims import check_private_dir, claimed_cpus


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSCALE_CPU_LOCK_DIR", str(tmp_path / "locks"))


def _claim_and_report(count, queue, release):
    """Claim ``count`` CPUs, report them and the affinity, hold them until ``release`` is set."""
    with claimed_cpus(count, timeout_s=30) as cpus:
        queue.put((cpus, sorted(os.sched_getaffinity(0))))
        release.wait(60)


def _record(events: str, line: str) -> None:
    """Append one event to the shared record: O_APPEND writes land in the order they are made."""
    fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _lines(events: str) -> list:
    try:
        with open(events) as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


def _wait_for_line(events: str, line: str, deadline_s: float = 60) -> None:
    """Wait (bounded) until ``line`` is in the record: the bound only ends a test that hangs."""
    import time

    end = time.monotonic() + deadline_s
    while line not in _lines(events):
        if time.monotonic() > end:
            raise AssertionError("no %r in the event record %s" % (line, _lines(events)))
        time.sleep(0.05)


def _hold_every_cpu(events, usable):
    """Claim every usable CPU; release them only once the waiter was refused."""
    with claimed_cpus(usable, timeout_s=30):
        _record(events, "holder claimed")
        _wait_for_line(events, "waiter refused")
        _record(events, "holder releasing")


def _wait_for_one_cpu(events):
    """First a claim that gives up at once (it must be refused), then a claim that waits."""
    try:
        with claimed_cpus(1, timeout_s=0):
            _record(events, "waiter claimed without waiting")
    except CellError:
        _record(events, "waiter refused")
    with claimed_cpus(1, timeout_s=60) as cpus:
        _record(events, "waiter claimed %d cpu" % len(cpus))


def test_claim_confines_the_process_and_restores_afterwards():
    before = sorted(os.sched_getaffinity(0))
    with claimed_cpus(1) as cpus:
        assert len(cpus) == 1
        assert sorted(os.sched_getaffinity(0)) == cpus
    assert sorted(os.sched_getaffinity(0)) == before


def test_concurrent_claims_get_disjoint_cpus():
    usable = len(os.sched_getaffinity(0))
    if usable < 2:
        pytest.fail(f"needs 2 usable CPUs to run two claims side by side; this process may use {usable}",
                    pytrace=False)
    queue = multiprocessing.Queue()
    release = multiprocessing.Event()
    procs = [multiprocessing.Process(target=_claim_and_report, args=(1, queue, release)) for _ in range(2)]
    for proc in procs:
        proc.start()
    try:
        # both report while both still hold their claim: the claims were held at the same time
        seen = [queue.get(timeout=30) for _ in procs]
    finally:
        release.set()
        for proc in procs:
            proc.join(30)
    (cpus_a, affinity_a), (cpus_b, affinity_b) = seen
    assert cpus_a == affinity_a and cpus_b == affinity_b
    assert len(cpus_a) == 1 and len(cpus_b) == 1
    assert not set(cpus_a) & set(cpus_b)
    assert [proc.exitcode for proc in procs] == [0, 0]


def test_claim_waits_until_cpus_are_released(tmp_path):
    """Event order, recorded by both processes in one append-only file: the holder claims every
    CPU; a claim that may not wait is refused; the holder announces its release and only then
    releases; the waiting claim gets its CPU after that announcement."""
    events = str(tmp_path / "events")
    usable = len(os.sched_getaffinity(0))
    holder = multiprocessing.Process(target=_hold_every_cpu, args=(events, usable))
    holder.start()
    try:
        _wait_for_line(events, "holder claimed")
        waiter = multiprocessing.Process(target=_wait_for_one_cpu, args=(events,))
        waiter.start()
        waiter.join(90)
    finally:
        holder.join(90)
    assert holder.exitcode == 0 and waiter.exitcode == 0, (holder.exitcode, waiter.exitcode, _lines(events))
    assert _lines(events) == ["holder claimed", "waiter refused", "holder releasing", "waiter claimed 1 cpu"]


def test_more_cores_than_cpus_claims_every_usable_cpu():
    usable = sorted(os.sched_getaffinity(0))
    with claimed_cpus(len(usable) + 3) as cpus:
        assert cpus == usable


def test_lock_dir_is_made_private(tmp_path):
    path = tmp_path / "locks"
    check_private_dir(str(path), "DLSCALE_CPU_LOCK_DIR")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_lock_dir_writable_by_others_is_refused(tmp_path):
    path = tmp_path / "locks"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(CellError, match=r"not a private directory of this user.*mode 777.*DLSCALE_CPU_LOCK_DIR"):
        check_private_dir(str(path), "DLSCALE_CPU_LOCK_DIR")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_lock_dir_of_another_user_is_refused(tmp_path):
    path = tmp_path / "locks"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(CellError, match="owner uid 65534"):
        check_private_dir(str(path), "DLSCALE_CPU_LOCK_DIR")


def test_claims_refuse_a_shared_lock_dir(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("DLSCALE_CPU_LOCK_DIR", str(shared))
    with pytest.raises(CellError):
        with claimed_cpus(1):
            pass
