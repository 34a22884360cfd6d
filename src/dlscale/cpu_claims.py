"""CPU claims: a cell (or a remote node's worker, or the PyTorch peer) holds one lock file per CPU
it uses and confines itself, and so every process it starts, to those CPUs, so that concurrent
cells on one node never share a CPU. Each held lock names its owner (``dlscale.neighbours``)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from typing import Dict, Iterator, List

from dlscale.cell_process import CellError


def cpu_lock_dir() -> str:
    return os.environ.get("DLSCALE_CPU_LOCK_DIR") or os.path.join(
        tempfile.gettempdir(), "dlscale-cpu-locks-%d" % os.getuid()
    )


@contextlib.contextmanager
def claimed_cpus(count: int, timeout_s: float = 3600.0, owner: str = "") -> Iterator[List[int]]:
    """Claim ``count`` CPUs of those this process may use (its Slurm allocation, or the machine)
    by holding one lock file per CPU, then confine this process to them.

    With fewer usable CPUs than ``count`` all of them are claimed (the cell is oversubscribed and
    metrics.json says so). Locks are released by the kernel if the process dies. Each held lock
    file names its ``owner`` (and pid), so that other cells can say whom they ran beside
    (``dlscale.neighbours``).
    """
    owner = "%s (pid %d)" % (owner or "a dlscale process", os.getpid())
    usable = sorted(os.sched_getaffinity(0))
    wanted = min(count, len(usable))
    check_private_dir(cpu_lock_dir(), "DLSCALE_CPU_LOCK_DIR")
    deadline = time.time() + timeout_s
    held: Dict[int, int] = {}
    try:
        while len(held) < wanted:
            for cpu in usable:
                if cpu in held or len(held) == wanted:
                    continue
                fd = os.open(os.path.join(cpu_lock_dir(), "cpu%d.lock" % cpu), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held[cpu] = fd
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, owner.encode(), 0)
                except OSError as error:
                    os.close(fd)
                    if error.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
            if len(held) < wanted:
                if time.time() > deadline:
                    raise CellError("waited %.0f s for %d free CPUs of %s" % (timeout_s, wanted, usable))
                time.sleep(0.5)
        cpus = sorted(held)
        os.sched_setaffinity(0, cpus)
        yield cpus
    finally:
        os.sched_setaffinity(0, usable)
        for fd in held.values():
            os.close(fd)  # closing releases the flock


def check_private_dir(path: str, variable: str) -> None:
    """Make ``path`` (mode 0700) or check that it is a directory of this user that nobody else
    may write: its name in /tmp is predictable, and another user who made it first could block
    or fake the CPU claims."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise CellError("%s is not a private directory of this user (owner uid %d, mode %03o): another "
                        "user could block or fake the CPU claims. Remove it, or set %s to a directory "
                        "of your own" % (path, info.st_uid, stat.S_IMODE(info.st_mode), variable))
