"""The PyTorch peer, for real, in the torch environment: one small confined cell per scaling mode;
the BigDL cell's defences (SIGTERM mid-training, a failure, Snakemake SIGKILLed mid-training:
exit 1, one FAILED line, no metrics, its CPUs released)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from dlscale.cell_process import CellError
from dlscale.cpu_claims import claimed_cpus
from dlscale.metrics import metrics_schema
from dlscale_testing import DRIVER_BIN, FASHION_MNIST, REPO

pytestmark = pytest.mark.integration

TORCH_PYTHON = Path(os.environ.get("DLSCALE_TORCH_PYTHON", REPO / ".venv" / "torch" / "bin" / "python"))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    import numpy as np

    from dlscale.partition import write_parquet_parts

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("torch-data")
    for name, n in (("train", 200), ("test", 100)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_parquet_parts(images, labels, root / name, n_files=2, seed=1, manifest={"dataset": "tiny"})
    return root


@pytest.mark.parametrize("scaling, cores, batch", [("strong", 2, 64), ("weak", 2, 128), ("strong", 1, 64)])
def test_torch_cell_writes_valid_confined_metrics(parts, tmp_path, scaling, cores, batch):
    if not TORCH_PYTHON.exists():
        pytest.fail(f"no torch environment at {TORCH_PYTHON}: run `envs/bootstrap.sh torch` (or make bench)")
    out = tmp_path / "metrics.json"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), DLSCALE_CPU_LOCK_DIR=str(tmp_path / "locks"))
    subprocess.run(
        [str(TORCH_PYTHON), "-m", "dlscale.torch_trainer", "--dataset", "fashion-mnist", "--scaling", scaling,
         "--size", "200", "--cores", str(cores), "--train-dir", str(parts / "train"),
         "--test-dir", str(parts / "test"), "--out", str(out)],
        check=True, env=env, timeout=300,
    )
    metrics = json.loads(out.read_text())
    import jsonschema

    schema = metrics_schema()  # the one the aggregation checks every cell against
    jsonschema.validate(metrics, schema)
    assert metrics["backend"] == "torch" and metrics["scaling"] == scaling
    assert metrics["batch_size"] == batch
    usable = len(os.sched_getaffinity(0))
    assert len(metrics["cpus_allowed"]) == min(cores, usable)
    assert metrics["executor_cpus_allowed"] == metrics["cpus_allowed"]
    assert metrics["threads"]["torch_num_threads"] == cores
    assert metrics["train_records"] == 200 and metrics["test_records"] == 100
    assert metrics["timings_s"]["cluster_start"] == 0 and metrics["timings_s"]["train"] > 0
    assert metrics["versions"]["torch"].startswith("2.13.0")


# --- the cell's defences mid-training, and through Snakemake ------------------------------------
TRAINING = "training: "  # logged just before the first batch


def torch_python() -> str:
    if not TORCH_PYTHON.exists():
        pytest.fail(f"no torch environment at {TORCH_PYTHON}: run `envs/bootstrap.sh torch` (or make bench)")
    return str(TORCH_PYTHON)


def wait_for_text(path: Path, needle: str, proc=None, bound_s: float = 300) -> str:
    """Wait until ``needle`` is in the file or ``proc`` ended (the bound only ends a hang)."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text or (proc is not None and proc.poll() is not None):
            return text
        time.sleep(0.1)
    return path.read_text(errors="replace") if path.exists() else ""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def torch_cells_in(workdir: Path) -> list[int]:
    """Pids of the torch cells running in ``workdir``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (b"dlscale.torch_trainer" in Path(f"/proc/{entry}/cmdline").read_bytes()
                    and os.path.realpath(f"/proc/{entry}/cwd") == str(workdir)):
                found.append(int(entry))
        except OSError:
            continue
    return found


def claim_every_cpu_now(lock_dir: Path) -> bool:
    """Whether every usable CPU can be claimed at once (no waiting) in ``lock_dir``."""
    before = os.environ.get("DLSCALE_CPU_LOCK_DIR")
    os.environ["DLSCALE_CPU_LOCK_DIR"] = str(lock_dir)
    try:
        with claimed_cpus(len(os.sched_getaffinity(0)), timeout_s=0):
            return True
    except CellError:
        return False
    finally:
        if before is None:
            del os.environ["DLSCALE_CPU_LOCK_DIR"]
        else:
            os.environ["DLSCALE_CPU_LOCK_DIR"] = before


def test_sigterm_mid_training_stops_the_cell_releases_its_cpus_and_writes_nothing(parts, tmp_path):
    out = tmp_path / "out" / "metrics.json"
    log = tmp_path / "cell.log"
    locks = tmp_path / "locks"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), DLSCALE_CPU_LOCK_DIR=str(locks))
    with log.open("w") as handle:  # 200 records x 10000 epochs: it trains until stopped
        cell = subprocess.Popen(
            [torch_python(), "-m", "dlscale.torch_trainer", "--dataset", "fashion-mnist", "--size", "200",
             "--cores", "1", "--epochs", "10000", "--train-dir", str(parts / "train"),
             "--test-dir", str(parts / "test"), "--out", str(out)],
            env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        text = wait_for_text(log, TRAINING, cell)
        assert TRAINING in text, text
        assert not claim_every_cpu_now(locks)  # positive control: its CPU claim is held while it trains
        cell.send_signal(signal.SIGTERM)
        cell.send_signal(signal.SIGTERM)  # a second one (Slurm signals every process) changes nothing
        assert cell.wait(timeout=120) == 1
    finally:
        if cell.poll() is None:
            cell.kill()
    text = log.read_text()
    assert "FAILED: received SIGTERM (scancel, the walltime, Ctrl-C or a stopped workflow). No metrics were " \
           "written; rerun the workflow" in text, text
    assert "torch cell done" not in text
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert claim_every_cpu_now(locks)  # its claim went with it


def test_bad_data_fails_the_cell_with_the_reason(parts, tmp_path):
    out = tmp_path / "out" / "metrics.json"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), DLSCALE_CPU_LOCK_DIR=str(tmp_path / "locks"))
    proc = subprocess.run(
        [torch_python(), "-m", "dlscale.torch_trainer", "--dataset", "fashion-mnist", "--size", "200",
         "--cores", "1", "--train-dir", str(tmp_path / "empty"), "--test-dir", str(parts / "test"),
         "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert f"FAILED: no part-*.parquet in {tmp_path / 'empty'}. No metrics were written" in proc.stderr, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert not out.exists()


def test_a_torch_cell_orphaned_by_a_killed_snakemake_stops_itself(tmp_path):
    """The rule execs the cell (its parent is Snakemake itself) with --exit-with-parent: when
    Snakemake is SIGKILLed mid-training, the cell stops with a FAILED message and no metrics."""
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Debian's dataset-fashion-mnist is missing: run `make fashion-mnist`")
    torch_python()
    workdir = tmp_path.resolve()
    config = {
        "dataset": {"name": "fashion-mnist", "dir": str(FASHION_MNIST)},
        "backends": ["torch"],
        "grid": {"sizes": [1000], "cores": [1], "repetitions": 1},
        "training": {"test_size": 500, "epochs": 1000},  # trains until Snakemake is killed
        "partition": {"files": 2},
    }
    (workdir / "test-config.yaml").write_text(yaml.safe_dump(config))
    cell_dir = "fashion-mnist/torch/strong/n1000/c1/r1"
    metrics = workdir / "results" / "cells" / cell_dir / "metrics.json"
    log = workdir / "results" / "logs" / "cells" / (cell_dir + ".log")
    env = dict(os.environ, DLSCALE_CPU_LOCK_DIR=str(workdir / "locks"))
    snakemake = subprocess.Popen(
        [str(DRIVER_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--workflow-profile", str(REPO / "workflow" / "profiles" / "default"),
         "--configfile", str(workdir / "test-config.yaml"), "--cores", "1",
         str(metrics.relative_to(workdir))],
        env=env, stdout=(workdir / "snakemake.out").open("w"), stderr=subprocess.STDOUT)
    cell = None
    try:
        text = wait_for_text(log, TRAINING, snakemake, bound_s=900)
        assert TRAINING in text, (workdir / "snakemake.out").read_text()[-3000:] + text
        cells = torch_cells_in(workdir)
        assert len(cells) == 1, cells
        cell = cells[0]
        ppid = int(Path(f"/proc/{cell}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert ppid == snakemake.pid, f"the cell's parent is {ppid}, not Snakemake ({snakemake.pid}): no exec?"
        snakemake.kill()
        snakemake.wait()
        deadline = time.monotonic() + 120  # bounds a hang; the cell checks its parent every second
        while running(cell) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(cell), "the orphaned torch cell is still running"
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
        if cell is not None and running(cell):
            os.kill(cell, signal.SIGKILL)
    text = log.read_text()
    assert re.search(r"FAILED: the process that started this cell \(pid %d, e\.g\. Snakemake\) is gone\. "
                     r"No metrics were written" % snakemake.pid, text), text
    assert not metrics.exists()
