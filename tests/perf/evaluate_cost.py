"""Where a cell's evaluation time goes: a 1-core cell's cluster and driver (the cell's own JVM
options), the published model trained one epoch on a subset, then the test set evaluated

1. as the trainer does (``model.evaluate`` on the cached RDD of Samples), twice;
2. the same RDD with a model that costs almost nothing (``Reshape`` + ``Linear(784, n)``): what
   is left is the data path (the cached Python Samples re-pickled by a Python worker, unpickled
   and converted to BigDL Samples by the executor JVM, batched) and BigDL's per-job set-up;
3. in the driver JVM, without Spark: ``predict_local`` on the test arrays as one tensor, the
   accuracy from its scores in numpy.

    .venv/trainer/bin/python tests/perf/evaluate_cost.py [--size 1000] [--dataset fashion-mnist]

Needs the prepared subsets under resources/<dataset>/ (the demo or `make bench` makes them).
Not a test: speed is measured here and in `make bench`, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))


def run_probe(args: argparse.Namespace) -> int:
    """Start a 1-core cluster as a cell does and submit this file as its driver."""
    from dlscale.cell import submit_conf
    from dlscale.cluster import StandaloneCluster
    from dlscale.spark_node import SparkInstall

    data = REPO / "resources" / args.dataset
    # the executors' Python workers import dlscale.trainer (load_samples); they inherit the worker's environment
    os.environ["PYTHONPATH"] = str(REPO / "src")
    scratch = tempfile.mkdtemp(prefix="dlscale-evaluate-cost-")
    cluster = StandaloneCluster(SparkInstall.discover(), scratch, cores_per_worker=1, worker_memory="1g")
    try:
        cluster.start()
        conf = submit_conf(1, 1, "1g", "1g", scratch)
        command = cluster.submit_command(os.path.abspath(__file__), [
            "--driver", "--train-dir", str(data / "subsets" / ("n%d" % args.size)), "--test-dir", str(data / "test")],
            conf)
        return subprocess.run(command, env=cluster.driver_env(), cwd=scratch).returncode
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def timed(label: str, action):
    tick = time.time()
    value = action()
    print("%-58s %6.2f s   %s" % (label, time.time() - tick, value), flush=True)
    return value


def driver(args: argparse.Namespace) -> int:
    import numpy as np
    from bigdl.dllib.nn.criterion import CrossEntropyCriterion
    from bigdl.dllib.nn.layer import Linear, Reshape, Sequential
    from bigdl.dllib.nncontext import init_nncontext
    from bigdl.dllib.optim.optimizer import Adam, MaxEpoch, Optimizer, Top1Accuracy

    from dlscale.paths import SUBSET_ARRAYS
    from dlscale.trainer import MNIST_MEAN, MNIST_STD, build_model, load_samples, manifest_classes

    sc = init_nncontext()
    n_classes = manifest_classes(args.train_dir)
    train_rdd, _, _ = load_samples(sc, args.train_dir, 1)
    test_rdd, test_records, _ = load_samples(sc, args.test_dir, 1)
    model = build_model(n_classes=n_classes)
    model.set_seed(42)
    trained = Optimizer.create(model=model, training_set=train_rdd, criterion=CrossEntropyCriterion(),
                               optim_method=Adam(learningrate=0.001), end_trigger=MaxEpoch(1),
                               batch_size=64).optimize()
    print("test set: %d records" % test_records, flush=True)

    def evaluate(net):
        return round(net.evaluate(test_rdd, 64, [Top1Accuracy()])[0].result, 4)

    for run in (1, 2):
        timed("evaluate, published model, cached RDD (run %d)" % run, lambda: evaluate(trained))
    linear = Sequential().add(Reshape([784])).add(Linear(784, n_classes))
    for run in (1, 2):
        timed("evaluate, Reshape + Linear, same RDD (run %d)" % run, lambda: evaluate(linear))

    images = np.load(os.path.join(args.test_dir, SUBSET_ARRAYS[0]))
    labels = np.load(os.path.join(args.test_dir, SUBSET_ARRAYS[1]))
    features = (images.astype(np.float32) / np.float32(255.0) - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)

    def local_accuracy():
        scores = np.asarray(trained.predict_local(features, batch_size=64))
        return round(float((scores.argmax(axis=1) == labels).mean()), 4)

    for run in (1, 2):
        timed("predict_local in the driver JVM, published model (run %d)" % run, local_accuracy)
    sc.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train-dir", help=argparse.SUPPRESS)
    parser.add_argument("--test-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return driver(args) if args.driver else run_probe(args)


if __name__ == "__main__":
    sys.exit(main())
