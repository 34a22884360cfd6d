"""A dataset of your own through the real `snakemake` command, as config/README.md tells users.

A 4-class subset of Debian's Fashion-MNIST is written as IDX (dlscale.idx.write_idx), its
checksums recorded with `python -m dlscale.custom_dataset`; bad copies of it get one ConfigError
each before any job, and the good one runs end to end (BigDL and the PyTorch peer, one cell each):
a model with 4 outputs, tables and figures named after the dataset, and an earlier study's
results left as they were.
"""

from __future__ import annotations

import gzip
import math
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dlscale.idx import load_split, write_idx
from dlscale_testing import DRIVER_BIN, FASHION_MNIST, REPO

pytestmark = pytest.mark.integration

NAME = "fm4"
N_CLASSES = 4
PER_CLASS = {"train": 100, "test": 25}  # 400 training and 100 test records


def write_subset(folder: Path) -> Path:
    """The first records of classes 0..3 of Fashion-MNIST, in MNIST's file names."""
    folder.mkdir(parents=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = load_split(FASHION_MNIST, split)
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[: PER_CLASS[split]] for c in range(N_CLASSES)]))
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[keep])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[keep])
    return folder


def record(folder: Path) -> dict:
    """The dataset block, recorded by the documented command."""
    proc = subprocess.run([str(DRIVER_BIN / "python"), "-m", "dlscale.custom_dataset", str(folder), "--name", NAME],
                          capture_output=True, text=True, timeout=120, check=True)
    return yaml.safe_load(proc.stdout)


def snakemake(workdir: Path, config: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "own.yaml").write_text(yaml.safe_dump(config))
    command = [str(DRIVER_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--workflow-profile", str(REPO / "workflow" / "profiles" / "default"),
               "--configfile", str(workdir / "own.yaml"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def earlier_results(workdir: Path) -> dict[Path, bytes]:
    """What an earlier study left in results/ (its files' bytes, to compare afterwards)."""
    files = {workdir / "results/tables/fashion-mnist/cells.csv": b"dataset,size\nfashion-mnist,1000\n",
             workdir / "results/cells/fashion-mnist/bigdl/strong/n1000/c1/r1/metrics.json": b"{}\n"}
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> tuple[Path, dict]:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Debian's dataset-fashion-mnist is missing: run `make fashion-mnist`")
    folder = write_subset(tmp_path_factory.mktemp("data") / NAME)
    return folder, record(folder)


# --- bad input: one ConfigError each, before any job ---------------------------------------------
def not_idx(folder: Path) -> None:
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"label\n0\n1\n", mtime=0))


def counts_differ(folder: Path) -> None:
    labels = load_split(folder, "test")[1]
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[:-1])


BAD = {
    "not IDX": (not_idx, {}, "train-labels-idx1-ubyte.gz: not an IDX file: it starts with b'label\\n0\\n'"),
    "image and label counts differ": (counts_differ, {}, "t10k-images-idx3-ubyte.gz: 100 images but "),
    "fewer records than the largest size": (None, {"sizes": [256, 512], "cores": [1]},
                                            f"grid.sizes [512] exceed the 400 training records of {NAME} "),
}


@pytest.fixture(scope="module")
def bad_runs(own_data, tmp_path_factory):
    """Each bad input through `snakemake -n` (a few seconds of parsing each), in parallel."""
    good, block = own_data
    cases = {}
    for case, (damage, grid, _) in BAD.items():
        workdir = tmp_path_factory.mktemp(case.replace(" ", "-"))
        folder = workdir / "data"
        folder.mkdir()
        for file in block["dataset"]["sha256"]:
            (folder / file).write_bytes((good / file).read_bytes())
        if damage:
            damage(folder)
        config = {"dataset": {**block["dataset"], "dir": str(folder)},
                  "grid": grid or {"sizes": [256], "cores": [1]}, "training": {"test_size": 100}}
        cases[case] = (workdir / "work", config, earlier_results(workdir / "work"))

    def one(case):
        workdir, config, before = cases[case]
        return snakemake(workdir, config, "-n"), before

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(BAD, pool.map(one, BAD)))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_own_data_gets_one_clear_error_and_keeps_earlier_results(bad_runs, case):
    proc, before = bad_runs[case]
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    expected = BAD[case][2]
    assert text.count(expected) == 1, f"{expected!r} not said once in:\n{text[-3000:]}"
    line = next(line for line in text.splitlines() if expected in line)
    assert ". Fix: " in line, line
    assert "ConfigError" in text and "Traceback" not in text
    workdir = next(iter(before)).parents[3]
    assert not (workdir / "resources").exists()
    assert {path: path.read_bytes() for path in before} == before


# --- the good data, end to end ----------------------------------------------------------------------
def test_own_data_runs_end_to_end_with_a_model_of_its_classes(own_data, tmp_path):
    folder, block = own_data
    workdir = tmp_path / "work"
    before = earlier_results(workdir)
    config = {**block, "grid": {"sizes": [256], "cores": [1]}, "backends": ["bigdl", "torch"],
              "training": {"test_size": 100}, "partition": {"files": 2}}
    proc = snakemake(workdir, config, "--cores", "2", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    logs = workdir / "results" / "logs" / "cells" / NAME
    bigdl_log = (logs / "bigdl/strong/n256/c1/r1.log").read_text()
    assert "dlscale.trainer: 4 classes, model" in bigdl_log
    assert "(128 -> 4)" in bigdl_log and "(128 -> 10)" not in bigdl_log  # BigDL's own description
    assert "out_features=4" in (logs / "torch/strong/n256/c1/r1.log").read_text()

    cells = pd.read_csv(workdir / "results" / "tables" / NAME / "cells.csv")
    assert set(cells["dataset"]) == {NAME} and len(cells) == 2
    # 4 outputs from the start: the loss of a uniform guess is ln 4 (1.39; ln 10 for 10 outputs)
    assert (cells["test_records"] == 100).all() and (cells["final_loss"] < math.log(10)).all()
    tables = sorted((workdir / "results" / "tables" / NAME).glob("runtime_*.md"))
    assert tables and all(f"dataset {NAME}" in table.read_text() for table in tables)
    assert sorted(p.name for p in (workdir / "results" / "figures" / NAME).glob("*.png"))
    assert {path: path.read_bytes() for path in before} == before  # the earlier study's files
