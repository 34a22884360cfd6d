"""A cell's private scratch: 0700, locked while in use, removed after; killed cells' swept."""

from __future__ import annotations

import fcntl
import os
import stat

import pytest

from dlscale.scratch import OWNER_LOCK, private_scratch, remove_stale_scratch


def test_scratch_is_private_locked_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSCALE_SCRATCH", str(tmp_path))
    with private_scratch() as scratch:
        assert stat.S_IMODE(os.stat(scratch).st_mode) == 0o700
        lock = os.open(os.path.join(scratch, OWNER_LOCK), os.O_RDONLY)
        with pytest.raises(BlockingIOError):  # held by the cell for as long as it runs
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(lock)
        assert remove_stale_scratch(str(tmp_path)) == []  # a live cell's scratch stays
    assert list(tmp_path.iterdir()) == []


def test_scratch_of_a_killed_cell_is_swept(tmp_path):
    killed = tmp_path / "dlscale-cell-killed"
    (killed / "local").mkdir(parents=True)
    (killed / OWNER_LOCK).touch()  # its flock went with the process
    foreign = tmp_path / "dlscale-cell-old"  # no owner lock: not ours to judge
    foreign.mkdir()
    unrelated = tmp_path / "something-else"
    unrelated.mkdir()
    assert remove_stale_scratch(str(tmp_path)) == [str(killed)]
    assert not killed.exists() and foreign.exists() and unrelated.exists()
