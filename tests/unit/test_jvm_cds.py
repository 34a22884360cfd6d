"""Class-data sharing settings (dlscale.jvm_cds): used only when the archives match the environment."""

from __future__ import annotations

import json
import logging
import os

from dlscale import jvm_cds
from dlscale.spark_node import SparkInstall


def fake_install(tmp_path) -> SparkInstall:
    """A trainer environment in miniature: a python, Spark's jars folder, two BigDL jars, a Java."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    jars = tmp_path / "spark" / "jars"
    jars.mkdir(parents=True)
    for name in ("spark-core.jar", "scala-library.jar", "README"):
        (jars / name).write_text(name)
    java = tmp_path / "java" / "lib" / "server"
    java.mkdir(parents=True)
    (java / "libjvm.so").write_text("jvm")
    bigdl = [tmp_path / "bigdl-all.jar", tmp_path / "bigdl-dllib.jar"]
    for jar in bigdl:
        jar.write_text(jar.name)
    return SparkInstall(str(tmp_path / "spark"), str(tmp_path / "java"), str(venv / "bin" / "python"),
                        [str(jar) for jar in bigdl])


def built(install: SparkInstall) -> None:
    folder = jvm_cds.archive_dir(install)
    os.makedirs(folder)
    for name in jvm_cds.ARCHIVES:
        open(os.path.join(folder, name + ".jsa"), "w").close()
    os.makedirs(os.path.join(folder, jvm_cds.NATIVE))
    for name in jvm_cds.MKL_LIBRARIES:
        open(os.path.join(folder, jvm_cds.NATIVE, name), "w").close()
    with open(os.path.join(folder, jvm_cds.STAMP), "w") as handle:
        json.dump(jvm_cds.fingerprint(install), handle)


def test_missing_archive_warns_with_the_fix_and_adds_nothing(tmp_path, caplog):
    install = fake_install(tmp_path)
    with caplog.at_level(logging.WARNING):
        cds = jvm_cds.settings(install)
    assert cds.problem and cds.opts("driver") == "" and cds.prefix("master") == ""
    assert "without class-data sharing" in caplog.text and "Fix: " in caplog.text


def test_archives_of_this_environment_are_used_by_every_jvm(tmp_path):
    install = fake_install(tmp_path)
    built(install)
    cds = jvm_cds.settings(install)
    assert not cds.problem
    for kind, archive in jvm_cds.KINDS.items():
        assert "-XX:SharedArchiveFile=" in cds.opts(kind) and cds.opts(kind).endswith("-Xshare:auto")
        assert archive + ".jsa" in cds.opts(kind)
    spark = jvm_cds.spark_jars(install)
    assert sorted(os.path.basename(jar) for jar in spark) == ["scala-library.jar", "spark-core.jar"]
    # a classpath maps its archive only if it starts with the dump-time one: BigDL first for the apps
    assert cds.prefix("master") == cds.prefix("worker") == ":".join(spark)
    assert cds.prefix("driver") == cds.prefix("executor") == ":".join(install.bigdl_jars + spark)
    assert cds.prefix("launcher") == ""  # its classpath is spark-class's jars/*, in the same order
    assert cds.library_path == os.path.join(jvm_cds.archive_dir(install), "native")  # BigDL's MKL


def test_archives_without_the_extracted_mkl_libraries_are_rebuilt(tmp_path):
    install = fake_install(tmp_path)
    built(install)
    os.remove(os.path.join(jvm_cds.archive_dir(install), jvm_cds.NATIVE, "libjmkl.so"))
    cds = jvm_cds.settings(install)
    assert "MKL libraries are missing" in cds.problem and cds.library_path == "" and cds.opts("driver") == ""


def test_a_changed_jar_makes_the_archives_stale(tmp_path):
    install = fake_install(tmp_path)
    built(install)
    with open(install.bigdl_jars[0], "a") as handle:
        handle.write("a new build")
    cds = jvm_cds.settings(install)
    assert "changed" in cds.problem and cds.opts("executor") == ""


def test_switched_off_for_measurements(tmp_path, monkeypatch):
    install = fake_install(tmp_path)
    built(install)
    monkeypatch.setenv("DLSCALE_CDS", "0")
    assert jvm_cds.settings(install).opts("master") == ""
