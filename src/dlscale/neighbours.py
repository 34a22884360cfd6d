"""Which other cells ran beside a cell on its node: the evidence behind ``exclusive`` in
metrics.json.

Every cell holds one lock file per CPU it claimed (``dlscale.cpu_claims.claimed_cpus``, in the
node's lock directory), and writes its name into it. ``Neighbours`` looks, every ``period_s`` while the
cell runs, at the lock files of every other CPU: one that is locked belongs to a cell running on
that CPU now, and its content names it. It cannot see processes that are not dlscale cells
(other users' jobs, a test suite): ``host_load`` in metrics.json is the evidence for those.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import threading
from typing import Iterable, List, Set


def held_by_others(lock_dir: str, own_cpus: Iterable[int]) -> Set[str]:
    """The owners named in the CPU lock files of ``lock_dir`` that some process holds now, apart
    from ``own_cpus``' files. A free file is taken for an instant with a shared lock (a cell
    claiming that CPU at the very same moment retries half a second later)."""
    own = {os.path.join(lock_dir, "cpu%d.lock" % cpu) for cpu in own_cpus}
    owners = set()
    for path in sorted(glob.glob(os.path.join(lock_dir, "cpu*.lock"))):
        if path in own:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                owners.add(os.pread(fd, 512, 0).decode(errors="replace").strip() or os.path.basename(path))
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return owners


class Neighbours(threading.Thread):
    """Collects ``held_by_others`` every ``period_s`` until ``stop()``; ``seen`` is the union."""

    def __init__(self, lock_dir: str, own_cpus: Iterable[int], period_s: float = 2.0):
        super().__init__(name="neighbours", daemon=True)
        self.lock_dir, self.own_cpus, self.period_s = lock_dir, list(own_cpus), period_s
        self.seen: Set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            self.seen |= held_by_others(self.lock_dir, self.own_cpus)
            if self._halt.wait(self.period_s):
                return

    def stop(self) -> List[str]:
        self._halt.set()
        self.join(10)
        self.seen |= held_by_others(self.lock_dir, self.own_cpus)
        return sorted(self.seen)
