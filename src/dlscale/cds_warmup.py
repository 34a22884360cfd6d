"""The warm-up cell whose JVMs list the classes for the class-data sharing archives (``dlscale.jvm_cds``).

A real cell in miniature, without the study's data: a one-core cluster, and a driver that writes
a few hundred synthetic records as a subset's arrays (the layout of ``dlscale.partition``) and
then runs the trainer's own ``train`` on them, so that every JVM loads what a cell's would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import List

RECORDS = 256  # four iterations of the published batch


def warmup_cell(install, work: str, cds) -> None:
    """Run the warm-up cell in ``work`` with ``cds`` (the class-list options) for every JVM."""
    from dlscale.cell import jvm_options
    from dlscale.cluster import StandaloneCluster

    install.cds = cds
    scratch = os.path.join(work, "scratch")
    os.makedirs(scratch, mode=0o700)
    cluster = StandaloneCluster(install, scratch, cores_per_worker=1, worker_memory="1g")
    try:
        cluster.start()
        conf = {"spark.executor.cores": "1", "spark.cores.max": "1", "spark.executor.memory": "1g",
                "spark.driver.memory": "1g", "spark.local.dir": os.path.join(scratch, "local"),
                **jvm_options(1)}  # the JVM options of a 1-core cell's driver and executor
        command = cluster.submit_command(os.path.abspath(__file__), ["--work", work], conf)
        done = subprocess.run(command, env=cluster.driver_env(), cwd=scratch, capture_output=True, text=True)
        if done.returncode != 0:
            # the driver's Python traceback is in its stdout, the JVM's complaints in stderr
            raise RuntimeError("the warm-up cell failed (exit %d):\n%s\n%s"
                               % (done.returncode, done.stdout[-2000:], done.stderr[-2000:]))
    finally:
        cluster.stop()


def _write_arrays(folder: str, records: int) -> None:
    """Synthetic images (28 x 28 bytes) and labels 0..9 as a subset's arrays, with its manifest."""
    import numpy as np

    from dlscale.trainer import save_subset_arrays

    os.makedirs(folder)
    images = (np.arange(records * 784, dtype=np.int64) * 7 % 256).astype(np.uint8).reshape(records, 28, 28)
    save_subset_arrays(folder, images, np.arange(records) % 10)
    with open(os.path.join(folder, "_manifest.json"), "w") as handle:
        json.dump({"n_classes": 10}, handle)


def main(argv: List[str]) -> int:
    """The warm-up's driver (run by spark-submit)."""
    from dlscale import trainer

    parser = argparse.ArgumentParser(description="the warm-up cell's driver")
    parser.add_argument("--work", required=True)
    work = parser.parse_args(argv).work
    data = os.path.join(work, "data")
    _write_arrays(os.path.join(data, "train"), RECORDS)
    _write_arrays(os.path.join(data, "test"), RECORDS)
    trainer.main(["--train-dir", os.path.join(data, "train"), "--test-dir", os.path.join(data, "test"),
                  "--out", os.path.join(work, "result.json"), "--summary-dir", os.path.join(work, "summary"),
                  "--cores", "1"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
