"""The PyTorch peer, for real: one small confined cell per scaling mode in the torch environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from dlscale_testing import REPO

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

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "metrics.schema.yaml").read_text())
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
