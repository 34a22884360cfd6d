"""The Spark application of one cell: train the seed's BigDL LSTM and time each phase.

Run by ``spark-submit`` in the trainer environment (Python 3.9, pyspark 3.1.3, BigDL dllib 2.4.0)
against the cell's transient standalone master; ``dlscale.cell`` starts that cluster and reads
the JSON this writes.

The model is the published one, exactly:
``Sequential: InferReshape([-1, 28], True) -> Recurrent(LSTM(28, 128)) -> Select(2, -1) -> Linear(128, 10)``,
with one output per class of the dataset (``Linear(128, n_classes)``: 10 for MNIST).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List

PIXELS = 28 * 28
# Normalisation constants of the training set, as in BigDL's own MNIST examples.
MNIST_MEAN = 0.13066047740239506
MNIST_STD = 0.3081078
PARQUET_SCHEMA = "image BINARY, label INT"  # the parts written by dlscale.partition
MANIFEST_NAME = "_manifest.json"  # dlscale.partition.MANIFEST_NAME (that module needs pyarrow)


def manifest_classes(train_dir: str) -> int:
    """The dataset's number of classes, from the subset's manifest (``dlscale.partition``
    counts them in the training labels). Subsets written before it was recorded are MNIST's: 10."""
    with open(os.path.join(train_dir, MANIFEST_NAME)) as handle:
        return int(json.load(handle).get("n_classes", 10))


def build_model(input_size: int = 28, hidden_size: int = 128, n_classes: int = 10):
    """The seed's model: each image is a sequence of 28 rows of 28 pixels; classify the last step."""
    from bigdl.dllib.nn.layer import LSTM, InferReshape, Linear, Recurrent, Select, Sequential

    model = Sequential()
    model.add(InferReshape([-1, input_size], True))
    model.add(Recurrent().add(LSTM(input_size, hidden_size)))
    model.add(Select(2, -1))
    model.add(Linear(hidden_size, n_classes))
    return model


def to_sample(row):
    """A Parquet row (784 raw bytes, label 0..9) -> a BigDL Sample (normalised 28x28, label 1..10)."""
    import numpy as np
    from bigdl.dllib.utils.common import Sample

    pixels = np.frombuffer(row.image, dtype=np.uint8).astype(np.float32) / 255.0
    features = ((pixels - MNIST_MEAN) / MNIST_STD).reshape(28, 28)
    return Sample.from_ndarray(features, np.array([row.label + 1], dtype=np.float32))


def to_samples(rows):
    """``to_sample`` for a whole partition: one numpy pass decodes and normalises every image
    (the per-record Python work left is the Sample itself)."""
    import numpy as np
    from bigdl.dllib.utils.common import Sample

    images, labels = [], []
    for row in rows:
        images.append(row.image)
        labels.append(row.label)
    if not images:
        return
    pixels = np.frombuffer(b"".join(images), dtype=np.uint8).reshape(-1, 28, 28).astype(np.float32)
    features = (pixels / np.float32(255.0) - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    targets = np.asarray(labels, dtype=np.float32).reshape(-1, 1) + np.float32(1.0)
    for image, target in zip(features, targets):
        yield Sample.from_ndarray(image, target)


def make_optim_method(name: str, learning_rate: float):
    from bigdl.dllib.optim.optimizer import SGD, Adam

    if name == "adam":
        return Adam(learningrate=learning_rate)
    if name == "sgd":
        return SGD(learningrate=learning_rate)
    raise ValueError("unknown optimizer %r: use adam or sgd" % name)


def load_samples(spark, parquet_dir: str, partitions: int):
    """Read a subset's Parquet parts into a cached RDD of Samples, materialised here so that
    the data-load phase is timed on its own, not inside the first training iteration.

    One partition per core (Spark packs the small Parquet files into as many splits as it
    likes; ``coalesce`` merges without a shuffle, ``repartition`` only if there are fewer), so
    every core converts its share once, vectorised per partition (``to_samples``); BigDL then
    reads the cached Samples."""
    tick = time.time()
    # The schema is known (dlscale.partition): no schema-inference job reading Parquet footers.
    rows = spark.read.schema(PARQUET_SCHEMA).parquet(parquet_dir).rdd
    read_s = time.time() - tick
    if rows.getNumPartitions() > partitions:
        rows = rows.coalesce(partitions)
    elif rows.getNumPartitions() < partitions:
        rows = rows.repartition(partitions)
    samples = rows.mapPartitions(to_samples).cache()
    count = samples.count()
    print("dlscale.trainer: %s: %d records in %d partitions; Parquet listing %.1f s, "
          "conversion to cached Samples %.1f s" % (parquet_dir, count, samples.getNumPartitions(), read_s,
                                                   time.time() - tick - read_s), file=sys.stderr, flush=True)
    return samples, count


def executor_view(sc, cores: int) -> List[Dict[str, Any]]:
    """What the Python workers on the executors could use: host, CPUs, thread settings (one entry
    per distinct view). Four tasks per core, so that every executor (one per node) runs some."""
    partitions = 4 * cores

    def probe(_):
        import os as _os
        import socket

        yield {
            "host": socket.gethostname(),
            "cpus_allowed": sorted(_os.sched_getaffinity(0)),
            "OMP_NUM_THREADS": _os.environ.get("OMP_NUM_THREADS"),
        }

    seen = sc.parallelize(range(partitions), partitions).mapPartitions(probe).collect()
    unique = {json.dumps(item, sort_keys=True) for item in seen}
    return [json.loads(item) for item in sorted(unique)]


def jvm_options_in_force(sc) -> Dict[str, str]:
    """The JVM options of the driver and of the executors as they run: the driver's as spark-submit
    started its JVM (it set them as system properties too; BigDL's ``init_nncontext`` then puts
    its own ``-Dlog4j2.info`` into the SparkConf, which no running JVM has), the executors' from
    the SparkContext that launches them."""
    return {
        "spark.driver.extraJavaOptions": sc._jvm.System.getProperty("spark.driver.extraJavaOptions"),
        "spark.executor.extraJavaOptions": sc.getConf().get("spark.executor.extraJavaOptions", None),
    }


def last_loss(summary) -> float:
    losses = summary.read_scalar("Loss")
    return float(losses[-1][1]) if len(losses) else float("nan")


def train(args: argparse.Namespace) -> Dict[str, Any]:
    from bigdl.dllib.nn.criterion import CrossEntropyCriterion
    from bigdl.dllib.nncontext import init_nncontext
    from bigdl.dllib.optim.optimizer import MaxEpoch, Optimizer, Top1Accuracy, TrainSummary
    from bigdl.dllib.utils.common import get_node_and_core_number
    from pyspark.sql import SparkSession

    timings: Dict[str, float] = {}
    started = time.time()
    sc = init_nncontext()  # the SparkConf comes from spark-submit; this also starts BigDL's Engine
    spark = SparkSession(sc)
    timings["context_start"] = time.time() - started

    tick = time.time()
    train_rdd, train_records = load_samples(spark, args.train_dir, args.cores)
    test_rdd, test_records = load_samples(spark, args.test_dir, args.cores)
    timings["data_load"] = time.time() - tick

    tick = time.time()
    n_classes = manifest_classes(args.train_dir)
    model = build_model(n_classes=n_classes)
    model.set_seed(args.seed)
    # BigDL's own description of the model, so the log shows the last layer's outputs.
    print("dlscale.trainer: %d classes, model %s" % (n_classes, model), file=sys.stderr, flush=True)
    optimizer = Optimizer.create(
        model=model,
        training_set=train_rdd,
        criterion=CrossEntropyCriterion(),
        optim_method=make_optim_method(args.optimizer, args.learning_rate),
        end_trigger=MaxEpoch(args.epochs),
        batch_size=args.batch_size,
    )
    summary = TrainSummary(log_dir=args.summary_dir, app_name="dlscale")
    optimizer.set_train_summary(summary)
    timings["model_setup"] = time.time() - tick
    tick = time.time()
    trained = optimizer.optimize()
    timings["train"] = time.time() - tick

    tick = time.time()
    accuracy = trained.evaluate(test_rdd, args.batch_size, [Top1Accuracy()])[0].result
    timings["evaluate"] = time.time() - tick

    from importlib.metadata import version

    # BigDL's engine as it trained: one model copy per core of each node (its executor)
    engine_nodes, engine_cores = get_node_and_core_number()
    result = {
        "train_records": train_records,
        "test_records": test_records,
        "timings_s": timings,
        "final_loss": last_loss(summary),
        "test_accuracy": float(accuracy),
        "records_per_s": train_records * args.epochs / timings["train"],
        "executors": executor_view(sc, args.cores),
        "spark_conf": {
            key: sc.getConf().get(key, None)
            for key in ("spark.master", "spark.executor.cores", "spark.cores.max", "spark.authenticate")
        },
        "jvm_options": jvm_options_in_force(sc),
        "bigdl_engine": {"nodes": int(engine_nodes), "cores_per_node": int(engine_cores)},
        "versions": {
            "python": platform.python_version(),
            "java": sc._jvm.System.getProperty("java.version"),
            "spark": sc.version,
            "bigdl": version("bigdl-dllib-spark3"),
        },
    }
    sc.stop()
    # On the cell's clock: it times the driver's start before ``begin`` and its stop after the
    # trainer's phases (dlscale.phases), so that no second of the cell goes unaccounted.
    result["clock"] = {"begin": started, "end": time.time()}
    return result


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-dir", required=True, help="Parquet parts of the training subset")
    parser.add_argument("--test-dir", required=True, help="Parquet parts of the test set")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    parser.add_argument("--summary-dir", required=True, help="scratch for BigDL's train summary")
    parser.add_argument("--cores", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    result = train(args)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
