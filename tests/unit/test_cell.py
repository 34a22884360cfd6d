"""The cell's own checks, arithmetic and records (no Spark): its data folders, atomic metrics, the
global batch, the thread settings taken from what the trainer found."""

from __future__ import annotations

import argparse
import json

import pytest

from dlscale import cell
from dlscale.cell import CellError, check_data_dirs, parse_args, run_cell
from dlscale.paths import SUBSET_ARRAYS


def test_write_json_atomically_replaces_whole_file(tmp_path):
    target = tmp_path / "deep" / "metrics.json"
    cell.write_json_atomically(str(target), {"a": 1})
    cell.write_json_atomically(str(target), {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("scaling,cores,expected", [("strong", 4, 64), ("weak", 4, 256), ("weak", 1, 64)])
def test_global_batch(scaling, cores, expected):
    args = argparse.Namespace(scaling=scaling, cores=cores, batch_size=64)
    assert cell.global_batch(args) == expected


def test_failed_metrics_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    cell.write_json_atomically(str(target), {"a": 1})
    with pytest.raises(TypeError):
        cell.write_json_atomically(str(target), {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_threads_are_what_the_trainer_found_not_what_the_cell_asked():
    """A two-node cell of 4 cores: one executor of 2 cores per node, 4 model replicas in all; MKL
    told to take its AVX2 kernels on one node only (an AMD and an Intel node)."""
    result = {
        "executors": [{"host": "n1", "cpus_allowed": [0, 1], "OMP_NUM_THREADS": "1", "MKL_DEBUG_CPU_TYPE": "5"},
                      {"host": "n2", "cpus_allowed": [0, 1], "OMP_NUM_THREADS": "1", "MKL_DEBUG_CPU_TYPE": None}],
        "spark_conf": {"spark.executor.cores": "2", "spark.cores.max": "4"},
        "jvm_options": {"spark.driver.extraJavaOptions": "-Xdriver", "spark.executor.extraJavaOptions": "-Xexec"},
        "bigdl_engine": {"nodes": 2, "cores_per_node": 2},
    }
    assert cell.threads_in_force(result) == {
        "OMP_NUM_THREADS": ["1"], "MKL_DEBUG_CPU_TYPE": ["5", "unset"],
        "spark.executor.cores": 2, "spark.cores.max": 4, "bigdl_model_replicas": 4,
        "spark.driver.extraJavaOptions": "-Xdriver", "spark.executor.extraJavaOptions": "-Xexec"}


def test_a_data_folder_without_its_arrays_fails_the_cell_before_spark_starts(tmp_path):
    train, test = tmp_path / "n1000", tmp_path / "test"
    for folder in (train, test):
        folder.mkdir()
        (folder / "part-0.parquet").write_bytes(b"PAR1")
        for name in SUBSET_ARRAYS:
            (folder / name).write_bytes(b"")
    check_data_dirs(str(train), str(test))  # positive control: both complete
    (train / SUBSET_ARRAYS[0]).unlink()  # a folder of an older dlscale: Parquet parts only
    args = parse_args(["--dataset", "d", "--size", "1000", "--cores", "1", "--train-dir", str(train),
                       "--test-dir", str(test), "--out", str(tmp_path / "metrics.json")])
    # run_cell checks first: no SparkInstall, no CPU claim, no cluster (a trainer environment is not needed)
    with pytest.raises(CellError, match=r"n1000 has no _images\.npy .* Fix: rerun the workflow"):
        run_cell(args)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["n1000", "test"]  # no metrics.json


def test_driver_and_executor_keep_their_log_and_temporary_files_in_the_scratch(monkeypatch):
    """The log4j 2 configuration and java.io.tmpdir (spark_node.BIGDL_JVM_OPTS) are in both JVMs'
    options, also when an experiment replaces the tuning options."""
    from dlscale.spark_node import BIGDL_JVM_OPTS

    assert "-Dlog4j.configurationFile=" in BIGDL_JVM_OPTS and "-Djava.io.tmpdir=." in BIGDL_JVM_OPTS
    default = cell.jvm_options(2)
    assert all(opts.endswith(" " + BIGDL_JVM_OPTS) and "-XX:ParallelGCThreads=2" in opts for opts in default.values())
    monkeypatch.setenv("DLSCALE_DRIVER_JAVA_OPTS", "-Xint")
    replaced = cell.jvm_options(2)
    assert replaced["spark.driver.extraJavaOptions"] == "-Xint " + BIGDL_JVM_OPTS
    assert replaced["spark.executor.extraJavaOptions"] == default["spark.executor.extraJavaOptions"]
