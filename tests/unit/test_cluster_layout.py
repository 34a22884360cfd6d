"""A cell's cluster layout (dlscale.cluster): an in-driver cluster starts nothing itself; its driver
gets Spark's local-cluster master and a SPARK_HOME whose ``work`` is the cell's scratch. Spark and
BigDL on it: tests/integration (test_workflow, test_faults)."""

from __future__ import annotations

import os

import pytest

from dlscale import jvm_cds
from dlscale.cluster import StandaloneCluster, memory_mb
from test_jvm_cds import built, fake_install


@pytest.mark.parametrize("memory, mb", [("4g", 4096), ("1G", 1024), ("512m", 512), ("700M", 700)])
def test_memory_mb(memory, mb):
    assert memory_mb(memory) == mb


@pytest.mark.parametrize("memory", ["4", "4t", "g", "1.5g", ""])
def test_memory_mb_names_the_fix(memory):
    with pytest.raises(ValueError, match="e.g. 512m or 4g"):
        memory_mb(memory)


def test_an_in_driver_cluster_starts_no_process_and_keeps_its_work_in_the_scratch(tmp_path):
    install = fake_install(tmp_path)
    (tmp_path / "spark" / "work").mkdir()  # the environment's own: never the cell's
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    cluster = StandaloneCluster(install, str(scratch), cores_per_worker=2, worker_memory="1g", in_driver=True)
    cluster.start()
    assert cluster.master_url == "local-cluster[1,2,1024]" and cluster._procs == []
    home = cluster.driver_env()["SPARK_HOME"]
    assert home == str(scratch / "spark-home") != install.spark_home
    assert os.path.realpath(os.path.join(home, "work")) == str(scratch / "work")
    assert os.path.realpath(os.path.join(home, "jars")) == os.path.join(install.spark_home, "jars")
    props = open(cluster.driver_properties({})).read()
    assert "spark.master local-cluster[1,2,1024]\n" in props and "spark.ui.killEnabled false\n" in props
    cluster.stop()  # nothing of its own to stop


def test_daemons_keep_the_environments_spark_home(tmp_path):
    install = fake_install(tmp_path)
    cluster = StandaloneCluster(install, str(tmp_path), cores_per_worker=1)
    assert cluster.driver_env()["SPARK_HOME"] == install.spark_home


def test_an_in_driver_cluster_has_one_node(tmp_path):
    cluster = StandaloneCluster(fake_install(tmp_path), str(tmp_path), cores_per_worker=1, in_driver=True,
                                remote_nodes=["n2"])
    with pytest.raises(ValueError, match="one node"):
        cluster.start()


def test_the_driver_and_executors_get_bigdls_extracted_mkl_first_on_their_library_path(tmp_path):
    """Only with the archives built (dlscale.jvm_cds), and a library path of the user's own stays."""
    install = fake_install(tmp_path)
    cluster = StandaloneCluster(install, str(tmp_path), cores_per_worker=1, in_driver=True)
    cluster.start()
    assert "extraLibraryPath" not in open(cluster.driver_properties({})).read()  # nothing built yet
    built(install)
    install.cds = None  # looked up again
    native = os.path.join(jvm_cds.archive_dir(install), jvm_cds.NATIVE)
    props = open(cluster.driver_properties({"spark.executor.extraLibraryPath": "/opt/mine"})).read()
    assert "spark.driver.extraLibraryPath %s\n" % native in props
    assert "spark.executor.extraLibraryPath %s:/opt/mine\n" % native in props
