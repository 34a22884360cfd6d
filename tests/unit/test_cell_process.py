"""How every process of a cell stops (no Spark): only the first signal interrupts its teardown,
and an orphaned cell stops itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from dlscale import cell_process

SRC = str(Path(cell_process.__file__).resolve().parents[1])


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_only_the_first_signal_interrupts_the_teardown():
    proc = run_python("""
        import os, signal, time
        from dlscale import cell_process
        for signum in cell_process.STOP_SIGNALS:
            signal.signal(signum, cell_process._raise_terminated)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except cell_process.Terminated as error:
            print("first:", error)
        os.kill(os.getpid(), signal.SIGTERM)  # during the teardown
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        print("teardown finished")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "first: received SIGTERM (scancel, the walltime, Ctrl-C or a stopped workflow)" in proc.stdout
    assert "teardown finished" in proc.stdout
    assert "SIGTERM ignored: the cell is already stopping" in proc.stderr


def test_an_orphaned_cell_stops_itself(tmp_path):
    """The cell's parent (Snakemake, which execs the cell) dies by SIGKILL: the cell notices and
    raises Terminated, so its teardown runs."""
    out = tmp_path / "out"
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(f"""
        import logging, signal, time
        from dlscale import cell_process
        logging.basicConfig()
        for signum in cell_process.STOP_SIGNALS:
            signal.signal(signum, cell_process._raise_terminated)
        cell_process.exit_with_parent()
        try:
            time.sleep(60)
            result = "not stopped"
        except cell_process.Terminated as error:
            result = str(error)
        open({str(out)!r}, "w").write(result)
    """))
    parent = run_python(f"""
        import os, signal, subprocess, sys, time
        subprocess.Popen([sys.executable, {str(child)!r}])
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert parent.returncode == -signal.SIGKILL
    deadline = time.time() + 20
    while time.time() < deadline and not out.exists():
        time.sleep(0.2)
    assert out.read_text().startswith("the process that started this cell (pid ")
    assert out.read_text().endswith("e.g. Snakemake) is gone")
