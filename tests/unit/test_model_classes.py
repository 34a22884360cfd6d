"""The model's last layer has one output per class of the dataset, counted in its training labels.

The class count travels in the subsets' manifests (dlscale.partition) to both trainers. The BigDL
model itself needs a JVM, so it is built in the end-to-end run (tests/integration/
test_custom_dataset.py reads BigDL's description of it from the cell's log); the PyTorch peer's
is built here, in its own environment.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dlscale.partition import partition_subset, write_parquet_parts
from dlscale.trainer import manifest_classes
from dlscale_testing import REPO

TORCH_PYTHON = REPO / ".venv" / "torch" / "bin" / "python"


def three_class_subset(tmp_path: Path, idx_factory) -> Path:
    raw = idx_factory.write_raw_dir(tmp_path / "raw", n_train=60, n_test=12, n_classes=3)
    partition_subset(raw, "three", size=30, seed=0, n_files=2, out_dir=tmp_path / "n30")
    return tmp_path / "n30"


def test_the_trainers_read_the_class_count_of_the_subset(tmp_path, idx_factory):
    assert manifest_classes(str(three_class_subset(tmp_path, idx_factory))) == 3


def test_subsets_made_before_the_count_was_recorded_are_mnist(tmp_path, idx_factory):
    images, labels = idx_factory.arrays(20)
    write_parquet_parts(images, labels, tmp_path / "old", n_files=1, manifest={"dataset": "mnist"})
    assert manifest_classes(str(tmp_path / "old")) == 10


@pytest.mark.skipif(not TORCH_PYTHON.exists(), reason="no .venv/torch (envs/bootstrap.sh torch)")
def test_the_pytorch_peer_has_three_outputs_for_three_classes(tmp_path, idx_factory):
    subset = three_class_subset(tmp_path, idx_factory)
    code = (
        "import sys; from dlscale.torch_trainer import build_model; from dlscale.trainer import manifest_classes\n"
        "model = build_model(n_classes=manifest_classes(sys.argv[1]))\n"
        "print(model.linear.in_features, model.linear.out_features)"
    )
    out = subprocess.run([str(TORCH_PYTHON), "-c", code, str(subset)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["128", "3"]
