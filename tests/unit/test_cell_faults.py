"""The cell's defences, each on its own (no Spark): private lock directory, stale scratch sweep,
atomic metrics, signal handling during teardown, orphan detection, daemons that die with it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dlscale import cell
from dlscale.cluster import die_with_parent

SRC = str(Path(cell.__file__).resolve().parents[1])


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)


# --- the CPU claim directory -------------------------------------------------------------------
def test_lock_dir_is_made_private(tmp_path):
    path = tmp_path / "locks"
    cell.check_private_dir(str(path), "DLSCALE_CPU_LOCK_DIR")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_lock_dir_writable_by_others_is_refused(tmp_path):
    path = tmp_path / "locks"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(cell.CellError, match=r"not a private directory of this user.*mode 777.*DLSCALE_CPU_LOCK_DIR"):
        cell.check_private_dir(str(path), "DLSCALE_CPU_LOCK_DIR")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_lock_dir_of_another_user_is_refused(tmp_path):
    path = tmp_path / "locks"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(cell.CellError, match="owner uid 65534"):
        cell.check_private_dir(str(path), "DLSCALE_CPU_LOCK_DIR")


def test_claims_refuse_a_shared_lock_dir(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("DLSCALE_CPU_LOCK_DIR", str(shared))
    with pytest.raises(cell.CellError):
        with cell.claimed_cpus(1):
            pass


# --- scratch ------------------------------------------------------------------------------------
def test_scratch_is_private_locked_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSCALE_SCRATCH", str(tmp_path))
    with cell.private_scratch() as scratch:
        assert stat.S_IMODE(os.stat(scratch).st_mode) == 0o700
        lock = os.open(os.path.join(scratch, cell.OWNER_LOCK), os.O_RDONLY)
        with pytest.raises(BlockingIOError):  # held by the cell for as long as it runs
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(lock)
        assert cell.remove_stale_scratch(str(tmp_path)) == []  # a live cell's scratch stays
    assert list(tmp_path.iterdir()) == []


def test_scratch_of_a_killed_cell_is_swept(tmp_path):
    killed = tmp_path / "dlscale-cell-killed"
    (killed / "local").mkdir(parents=True)
    (killed / cell.OWNER_LOCK).touch()  # its flock went with the process
    foreign = tmp_path / "dlscale-cell-old"  # no owner lock: not ours to judge
    foreign.mkdir()
    unrelated = tmp_path / "something-else"
    unrelated.mkdir()
    assert cell.remove_stale_scratch(str(tmp_path)) == [str(killed)]
    assert not killed.exists() and foreign.exists() and unrelated.exists()


# --- metrics -----------------------------------------------------------------------------------
def test_failed_metrics_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    cell.write_json_atomically(str(target), {"a": 1})
    with pytest.raises(TypeError):
        cell.write_json_atomically(str(target), {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# --- signals -----------------------------------------------------------------------------------
def test_only_the_first_signal_interrupts_the_teardown():
    proc = run_python("""
        import os, signal, time
        from dlscale import cell
        for signum in cell.STOP_SIGNALS:
            signal.signal(signum, cell._raise_terminated)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except cell.Terminated as error:
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
        from dlscale import cell
        logging.basicConfig()
        for signum in cell.STOP_SIGNALS:
            signal.signal(signum, cell._raise_terminated)
        cell.exit_with_parent()
        try:
            time.sleep(60)
            result = "not stopped"
        except cell.Terminated as error:
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


def test_daemons_die_with_a_sigkilled_cell():
    """What the cell starts with preexec_fn=die_with_parent gets SIGTERM when the cell is SIGKILLed."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import subprocess, sys, time
            from dlscale.cluster import die_with_parent
            child = subprocess.Popen(["sleep", "300"], start_new_session=True, preexec_fn=die_with_parent)
            print(child.pid, flush=True)
            time.sleep(300)
        """)],
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert Path(f"/proc/{child}").exists()
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline and _running(child):
            time.sleep(0.1)
        assert not _running(child), "the child outlived its SIGKILLed parent"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

