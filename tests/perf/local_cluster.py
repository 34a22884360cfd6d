"""Can a single-node cell drop its master and worker JVMs? Spark's ``local-cluster[1,c,mb]``
master runs a standalone Master and Worker inside the driver JVM (executors stay JVMs of their
own). This starts such a SparkContext with BigDL's jars and asks BigDL's Engine to start on it.

    .venv/trainer/bin/python tests/perf/local_cluster.py

Prints the context's start time and what ``init_engine`` says. With bigdl-dllib-spark3 2.4.0 and
pyspark 3.1.3: the context starts, the Engine refuses the master (``Can't parse master
local-cluster[1,1,1024]``; it accepts local[n], local[*], spark://, yarn, k8s), so BigDL cannot
train there (README, Performance, step 9). Not a test: a probe of the trainer environment.
A throw-away SPARK_HOME of links (its own ``work/``) keeps the in-process worker's executor
folders out of the environment.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from dlscale.spark_node import SparkInstall  # noqa: E402


def main() -> int:
    install = SparkInstall.discover()
    home = tempfile.mkdtemp(prefix="dlscale-local-cluster-")
    for name in os.listdir(install.spark_home):
        if name != "work":
            os.symlink(os.path.join(install.spark_home, name), os.path.join(home, name))
    os.environ.update(SPARK_HOME=home, JAVA_HOME=install.java_home, SPARK_LOCAL_IP="127.0.0.1", OMP_NUM_THREADS="1")
    from bigdl.dllib.utils.common import init_engine
    from pyspark import SparkConf, SparkContext

    jars = ":".join(install.bigdl_jars)
    conf = (SparkConf().setMaster("local-cluster[1,1,1024]").setAppName("local-cluster probe")
            .set("spark.executor.cores", "1").set("spark.cores.max", "1").set("spark.executor.memory", "512m")
            .set("spark.driver.extraClassPath", jars).set("spark.executor.extraClassPath", jars))
    tick = time.time()
    sc = SparkContext(conf=conf)
    print("local-cluster context up in %.1f s (SPARK_HOME %s)" % (time.time() - tick, home), flush=True)
    try:
        init_engine()
        print("BigDL init_engine: OK", flush=True)
        return 0
    except Exception as error:  # noqa: BLE001 - py4j wraps the JVM's exception
        reason = next((line for line in str(error).splitlines() if "master" in line), str(error).splitlines()[0])
        print("BigDL init_engine: FAILED: %s" % reason.strip(), flush=True)
        return 1
    finally:
        sc.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
