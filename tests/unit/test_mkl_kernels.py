"""MKL, as BigDL carries it, takes its AVX2 kernels in a cell's environment.

BigDL's native jar (bigdl-core's ``all-*.jar``) bundles MKL 2019.0 Update 1 as ``libjmkl.so``,
which runs its generic kernels on a CPU not made by Intel unless MKL_DEBUG_CPU_TYPE=5
(``dlscale.spark_node.mkl_cpu_setting``; README "What was tuned", step 16). The last test loads
that very library, without a JVM, and asks it which kernels it dispatches to
(``mkl_serv_cpu_detect``: 0 the generic ones, 5 AVX2). The others check that BigDL's MKL loader
takes the libraries that ``make envs`` extracted once (dlscale.jvm_cds) from the library path a
cell gives its driver and executors, instead of inflating them from the jar at each JVM's start.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile

import pytest
from dlscale_testing import REPO, TRAINER_PYTHON

from dlscale import jvm_cds
from dlscale.spark_node import MKL_CPU_VAR, MKL_SWITCH_VAR, SparkInstall, mkl_cpu_setting, node_cpuinfo, spark_env

AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 avx512f\n"
INTEL = AMD.replace("AuthenticAMD", "GenuineIntel").replace("AMD EPYC", "Intel(R) Xeon(R)")
OLD_AMD = AMD.replace(" fma avx2 avx512f", "")  # e.g. an Opteron of 2011: no AVX2 kernels to take
INSTALL = SparkInstall(spark_home="/spark", java_home="/java", python="/env/bin/python", bigdl_jars=["a.jar"])


@pytest.mark.parametrize("cpuinfo, environ, expected", [
    (AMD, {}, {MKL_CPU_VAR: "5"}),
    (AMD + "\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu\n", {}, {MKL_CPU_VAR: "5"}),  # the first CPU's
    (INTEL, {}, {}),  # MKL picks its kernels itself on Intel's CPUs
    (OLD_AMD, {}, {}),
    ("", {}, {}),  # no /proc/cpuinfo
    (AMD, {MKL_CPU_VAR: "4"}, {}),  # the user's own choice stays
    (AMD, {MKL_SWITCH_VAR: "0"}, {}),  # off, for measurements
    (AMD, {MKL_SWITCH_VAR: "1"}, {MKL_CPU_VAR: "5"}),
])
def test_mkl_is_told_to_take_avx2_kernels_on_amd_cpus_only(cpuinfo, environ, expected):
    assert mkl_cpu_setting(cpuinfo, environ) == expected


def test_every_spark_process_of_the_node_gets_the_setting_unless_the_user_chose(tmp_path, monkeypatch):
    monkeypatch.delenv(MKL_CPU_VAR, raising=False)
    monkeypatch.delenv(MKL_SWITCH_VAR, raising=False)
    chosen = mkl_cpu_setting(node_cpuinfo(), {})
    assert spark_env(INSTALL, str(tmp_path), "127.0.0.1", "t").get(MKL_CPU_VAR) == chosen.get(MKL_CPU_VAR)
    monkeypatch.setenv(MKL_SWITCH_VAR, "0")
    assert MKL_CPU_VAR not in spark_env(INSTALL, str(tmp_path), "127.0.0.1", "t")
    monkeypatch.setenv(MKL_CPU_VAR, "4")
    assert spark_env(INSTALL, str(tmp_path), "127.0.0.1", "t")[MKL_CPU_VAR] == "4"


DETECT = """
import ctypes, sys
ctypes.CDLL(sys.argv[1] + "/libiomp5.so", mode=ctypes.RTLD_GLOBAL)  # libjmkl.so needs it
print(ctypes.CDLL(sys.argv[1] + "/libjmkl.so").mkl_serv_cpu_detect())
"""


@pytest.fixture(scope="module")
def trainer_install():
    return SparkInstall.discover(str(TRAINER_PYTHON))


def test_bigdls_mkl_dispatches_to_avx2_kernels_with_the_cells_environment(trainer_install, tmp_path, monkeypatch):
    """On this project's AMD machines MKL alone takes its generic kernels (the control) and, in
    the environment a cell gives its Spark processes, its AVX2 ones; elsewhere nothing changes."""
    jvm_cds.extract_mkl(trainer_install, str(tmp_path))  # libjmkl.so and libiomp5.so from BigDL's jar
    monkeypatch.delenv(MKL_CPU_VAR, raising=False)
    monkeypatch.delenv(MKL_SWITCH_VAR, raising=False)

    def kernels(env):
        return int(subprocess.run([sys.executable, "-c", DETECT, str(tmp_path)], env=env, check=True,
                                  capture_output=True, text=True).stdout)

    cells = spark_env(INSTALL, str(tmp_path), "127.0.0.1", "t")
    alone = {key: value for key, value in cells.items() if key != MKL_CPU_VAR}
    cpuinfo = node_cpuinfo()
    if re.search(r"^vendor_id\s*: AuthenticAMD$", cpuinfo, re.M) and re.search(r"^flags\s*:.* avx2 ", cpuinfo, re.M):
        assert (kernels(alone), kernels(cells)) == (0, 5)
    else:
        assert kernels(cells) == kernels(alone)


# A driver as a cell's trainer is one (spark-submit's PythonRunner starts it), which makes BigDL load
# MKL in its JVM and prints the libjmkl.so that JVM mapped.
LOAD_MKL = """
from pyspark import SparkConf, SparkContext
from dlscale.trainer import driver_mkl_library
sc = SparkContext(conf=SparkConf().setMaster("local[1]").setAppName("mkl-library"))
assert sc._jvm.com.intel.analytics.bigdl.mkl.MKL.isMKLLoaded()
print("mapped:", driver_mkl_library())
sc.stop()
"""


def test_mkl_libraries_are_extracted_byte_for_byte_from_bigdls_jar(trainer_install, tmp_path):
    jvm_cds.extract_mkl(trainer_install, str(tmp_path))
    [jar] = [jar for jar in trainer_install.bigdl_jars if "libjmkl.so" in zipfile.ZipFile(jar).namelist()]
    with zipfile.ZipFile(jar) as archive:
        for name in jvm_cds.MKL_LIBRARIES:
            assert (tmp_path / name).read_bytes() == archive.read(name)


def test_an_install_without_mkl_in_its_jars_is_an_error(tmp_path):
    jar = tmp_path / "bigdl.jar"
    with zipfile.ZipFile(jar, "w") as archive:
        archive.writestr("libiomp5.so", b"")  # one of the two only
    install = SparkInstall(spark_home="/spark", java_home="/java", python="/env/bin/python", bigdl_jars=[str(jar)])
    with pytest.raises(RuntimeError, match="no BigDL jar carries libiomp5.so and libjmkl.so"):
        jvm_cds.extract_mkl(install, str(tmp_path / "out"))


def test_the_driver_jvm_loads_mkl_from_the_extracted_folder_on_its_library_path(trainer_install, tmp_path):
    """The control first: without the library path BigDL's loader inflates a temporary copy (and
    deletes it once loaded); with the folder on it (spark.driver.extraLibraryPath, as a cell's
    driver properties set it) the JVM maps the folder's own file."""
    native = tmp_path / "native"
    jvm_cds.extract_mkl(trainer_install, str(native))
    (tmp_path / "load_mkl.py").write_text(LOAD_MKL)
    env = spark_env(trainer_install, str(tmp_path), "127.0.0.1", "test-mkl-library")
    env["PYSPARK_DRIVER_PYTHON"] = trainer_install.python
    env["PYTHONPATH"] = str(REPO / "src")  # dlscale.trainer

    def mapped(*conf):
        command = [trainer_install.spark_submit, "--driver-class-path", ":".join(trainer_install.bigdl_jars),
                   *conf, str(tmp_path / "load_mkl.py")]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        [line] = [line for line in done.stdout.splitlines() if line.startswith("mapped: ")]  # Spark logs there too
        return line[len("mapped: "):]

    inflated = mapped()
    assert "/mkl.native" in inflated and inflated.endswith("/libjmkl.so (deleted)")
    assert mapped("--conf", "spark.driver.extraLibraryPath=%s" % native) == str(native / "libjmkl.so")
