"""The PyTorch peer's pure parts, in the driver environment (no torch needed): data reading,
and the cell's defences while it waits for CPUs (signals, a dead parent, a failure: exit 1, one
FAILED line, no metrics). Training with real torch, and the same faults mid-training and through
Snakemake, are tests/integration/test_torch_cell.py."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dlscale import torch_trainer
from dlscale.partition import write_parquet_parts
from dlscale.trainer import MNIST_MEAN, MNIST_STD


def test_reads_the_parquet_parts_normalised_like_the_bigdl_trainer(tmp_path, idx_factory):
    images, labels = idx_factory.arrays(37, seed=3)
    write_parquet_parts(images, labels, tmp_path / "n37", n_files=3, seed=5, manifest={"dataset": "tiny"})
    x, y = torch_trainer.read_parquet_dir(str(tmp_path / "n37"))
    assert x.shape == (37, 28, 28) and x.dtype == np.float32
    assert y.dtype == np.int64 and sorted(y.tolist()) == sorted(labels.tolist())
    # every row is one original image with its label, normalised as dlscale.trainer.to_samples does
    expected = {(int(l), ((img.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).tobytes())
                for img, l in zip(images, labels)}
    got = {(int(l), img.tobytes()) for img, l in zip(x, y)}
    assert got == expected


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no part-"):
        torch_trainer.read_parquet_dir(str(tmp_path))


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="adam or sgd"):
        torch_trainer.make_optimizer("lbfgs", [], 0.1)


# --- the cell's defences (the frame of dlscale.cell), without torch: the cell waits for CPUs ----
SRC = str(Path(torch_trainer.__file__).resolve().parents[1])


def hold_every_cpu(lock_dir: Path) -> list[int]:
    """Take every usable CPU's claim lock (as other cells would): fds to close to release them."""
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    fds = []
    for cpu in sorted(os.sched_getaffinity(0)):
        fd = os.open(lock_dir / f"cpu{cpu}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fds.append(fd)
    return fds


def cell_argv(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dlscale.torch_trainer", "--dataset", "fashion-mnist", "--size", "37",
            "--cores", "1", "--train-dir", str(tmp_path / "train"), "--test-dir", str(tmp_path / "test"),
            "--out", str(tmp_path / "out" / "metrics.json"), *extra]


def cell_env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "DLSCALE_CPU_LOCK_DIR": str(tmp_path / "locks")}


def wait_for_text(path: Path, needle: str, proc: subprocess.Popen | None = None, bound_s: float = 60) -> str:
    """Wait until ``needle`` is in the file (the bound only ends a test that would hang)."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text or (proc is not None and proc.poll() is not None):
            return text
        time.sleep(0.05)
    return path.read_text(errors="replace") if path.exists() else ""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_cell_with_a_failed_message_and_no_metrics(tmp_path):
    held = hold_every_cpu(tmp_path / "locks")
    log = tmp_path / "cell.log"
    try:
        with log.open("w") as out:
            cell = subprocess.Popen(cell_argv(tmp_path), env=cell_env(tmp_path), stdout=out, stderr=subprocess.STDOUT)
        # handlers are installed before it claims: the claim (it waits, every CPU is taken) comes after
        assert "claiming 1 CPU(s)" in wait_for_text(log, "claiming 1 CPU(s)", cell)
        cell.send_signal(signal.SIGTERM)
        assert cell.wait(timeout=60) == 1
    finally:
        for fd in held:
            os.close(fd)
    text = log.read_text()
    assert "FAILED: received SIGTERM (scancel, the walltime, Ctrl-C or a stopped workflow). No metrics were " \
           "written; rerun the workflow" in text, text
    assert "torch cell confined to CPUs" not in text  # it was stopped while it waited
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_an_orphaned_cell_stops_itself(tmp_path):
    """Its parent (Snakemake, which execs the cell) is SIGKILLed: with --exit-with-parent the cell
    notices and stops with a FAILED message naming the reason."""
    held = hold_every_cpu(tmp_path / "locks")
    log = tmp_path / "cell.log"
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import subprocess, sys, time
            cell = subprocess.Popen({cell_argv(tmp_path, "--exit-with-parent")!r},
                                    stdout=open({str(log)!r}, "w"), stderr=subprocess.STDOUT)
            print(cell.pid, flush=True)
            time.sleep(300)
        """)],
        env=cell_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        cell = int(parent.stdout.readline())
        assert "claiming 1 CPU(s)" in wait_for_text(log, "claiming 1 CPU(s)")
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60  # bounds a hang; the cell checks its parent every second
        while running(cell) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(cell), "the orphaned cell is still running"
    finally:
        if parent.poll() is None:
            parent.kill()
        for fd in held:
            os.close(fd)
    text = log.read_text()
    assert re.search(r"FAILED: the process that started this cell \(pid \d+, e\.g\. Snakemake\) is gone\. "
                     r"No metrics were written", text), text
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_failing_cell_exits_1_with_a_failed_message(tmp_path):
    """Any error (here: no data; in an environment without torch, its import) ends the same way."""
    (tmp_path / "locks").mkdir(mode=0o700)
    proc = subprocess.run(cell_argv(tmp_path), env=cell_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"torch cell fashion-mnist n37 c1 r1 FAILED: .+\. No metrics were written; rerun the workflow",
                     proc.stderr), proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert not (tmp_path / "out").exists()
