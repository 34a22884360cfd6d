"""The PyTorch peer's pure parts, in the driver environment (no torch needed): data reading
and the metrics it writes. Training with real torch is tests/integration/test_torch_cell.py."""

from __future__ import annotations

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
    # every row is one original image with its label, normalised as dlscale.trainer.to_sample does
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
