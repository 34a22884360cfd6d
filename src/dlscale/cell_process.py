"""How every process of a cell starts, stops and fails: the BigDL cell (``dlscale.cell``), the
worker on a remote node (``dlscale.node_worker``) and the PyTorch peer (``dlscale.torch_trainer``).

The first stop signal raises ``Terminated`` in the main thread, so that the teardown in
``finally`` blocks runs; later ones are ignored while it does. With ``exit_with_parent`` the
process also stops when the process that started it dies.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Dict

log = logging.getLogger("dlscale.cell")  # the cell's log lines keep their name


class CellError(RuntimeError):
    """A cell failed; the message says what and where to look."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGINT/SIGUSR1/SIGHUP (scancel, walltime via --signal,
    Ctrl-C, a closed terminal) so that teardown in ``finally`` blocks runs. BaseException: no
    ``except Exception`` swallows it."""


# SIGHUP: the terminal or session that started the cell closed (a dropped ssh connection: the shell
# passes SIGHUP on to its jobs). Not when the cell was started with SIGHUP ignored (nohup): it stays so.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) + (
    () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,))
_stop_reason: Dict[str, str] = {}  # set by the exit-with-parent watchdog before it signals us


def _raise_terminated(signum, _frame):
    # Only the first signal interrupts: later ones (Slurm signals every process of the job, users
    # press Ctrl-C twice) would otherwise abort the teardown half-way and leave daemons behind.
    for other in STOP_SIGNALS:
        signal.signal(other, _ignore_during_teardown)
    name = signal.Signals(signum).name
    raise Terminated(_stop_reason.get("reason") or
                     "received %s (scancel, the walltime, Ctrl-C or a stopped workflow)" % name)


def _ignore_during_teardown(signum, _frame):
    log.warning("%s ignored: the cell is already stopping", signal.Signals(signum).name)


def exit_with_parent() -> None:
    """Stop the cell (SIGTERM to itself, so teardown runs) if the process that started it dies.

    The rule ``exec``s the cell, so its parent is Snakemake: a SIGKILLed Snakemake would
    otherwise leave the cell training for nobody, next to the same cell started by the rerun.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        _stop_reason["reason"] = ("the process that started this cell (pid %d, e.g. Snakemake) is gone"
                                  % parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def start_cell_process(with_parent: bool = False) -> None:
    """How every process of a cell starts: log to stderr, the first stop signal raises Terminated
    so that teardown runs, and with ``with_parent`` stop when the process that started it dies
    (``exit_with_parent``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_terminated)
    if with_parent:
        exit_with_parent()
