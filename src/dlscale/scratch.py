"""A cell's private scratch directory on node-local storage (0700, removed at the end), and the
sweep of those whose cell was killed before it could remove its own."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from typing import Iterator, List

log = logging.getLogger("dlscale.cell")  # the cell's log lines keep their name

SCRATCH_PREFIX = "dlscale-cell-"
OWNER_LOCK = ".owner.lock"  # flock-ed by the cell for as long as it uses its scratch


def node_local_tmp() -> str:
    """Node-local storage: ``$SLURM_TMPDIR`` (a common site convention) if set, else ``$TMPDIR``
    (through tempfile; the Slurm jobstep plugin drops SLURM_* variables from a rule's
    environment, TMPDIR stays), else /tmp."""
    return os.environ.get("DLSCALE_SCRATCH") or os.environ.get("SLURM_TMPDIR") or tempfile.gettempdir()


def remove_stale_scratch(parent: str) -> List[str]:
    """Remove this user's cell scratch directories whose cell died without its teardown (SIGKILL,
    OOM killer): the kernel released their owner lock. Returns the paths removed."""
    removed = []
    try:
        entries = [entry for entry in os.listdir(parent) if entry.startswith(SCRATCH_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(parent, entry)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(path, OWNER_LOCK), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone, not ours, or not made by this version
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its cell is alive
        else:
            log.warning("removing %s, left behind by a cell that was killed", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def private_scratch() -> Iterator[str]:
    """A fresh 0700 directory in node-local storage, locked by this process while it is in use
    and removed afterwards; first sweeps those of killed cells (``remove_stale_scratch``)."""
    parent = node_local_tmp()
    remove_stale_scratch(parent)
    path = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent)  # mode 0700
    # The owner lock appears under its name already locked, so a sweeping cell never takes it.
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".owner-")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, os.path.join(path, OWNER_LOCK))
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
