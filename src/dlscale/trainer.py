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
from typing import Any, Dict, List, Optional

from dlscale.paths import SUBSET_ARRAYS

PIXELS = 28 * 28
# Normalisation constants of the training set, as in BigDL's own MNIST examples.
MNIST_MEAN = 0.13066047740239506
MNIST_STD = 0.3081078
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


class Pickled:
    """An object that pickles as ``factory(*args)`` and is nothing else: a record in the form in
    which BigDL's Python classes pickle themselves, without building them (``to_samples``)."""

    __slots__ = ("factory", "args")

    def __init__(self, factory, args: tuple):
        self.factory, self.args = factory, args

    def __reduce__(self):
        return self.factory, self.args


def to_samples(images, labels):
    """Images (N x 28 x 28 uint8) and labels (N, 0-based) -> records that pickle byte for byte as
    BigDL's ``Sample.from_ndarray(image, label + 1)`` does (its ``__reduce__``: a ``Sample`` of one
    ``JTensor`` of features and one of labels, each its float32 bytes, int32 shape bytes and
    "float"), which is all the executor JVM sees of them: it unpickles them into its own Samples.
    One numpy pass normalises every image; BigDL's Python Samples, built and pickled one by one,
    cost three times the CPU (README, step 15)."""
    import numpy as np
    from bigdl.dllib.utils.common import JTensor, Sample

    features = (np.asarray(images, dtype=np.float32) / np.float32(255.0) - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    targets = np.asarray(labels, dtype=np.float32).reshape(-1, 1) + np.float32(1.0)
    image_shape = np.array(features.shape[1:], dtype=np.int32).tobytes()
    target_shape = np.array([1], dtype=np.int32).tobytes()
    for image, target in zip(features, targets):
        yield Pickled(Sample, ([Pickled(JTensor, (image.tobytes(), image_shape, "float"))],
                               [Pickled(JTensor, (target.tobytes(), target_shape, "float"))], "float"))


def make_optim_method(name: str, learning_rate: float):
    from bigdl.dllib.optim.optimizer import SGD, Adam

    if name == "adam":
        return Adam(learningrate=learning_rate)
    if name == "sgd":
        return SGD(learningrate=learning_rate)
    raise ValueError("unknown optimizer %r: use adam or sgd" % name)


def save_subset_arrays(folder, images, labels) -> None:
    """Write a subset's arrays (``SUBSET_ARRAYS`` in ``folder``), the form ``load_samples`` maps:
    images N x 28 x 28 uint8, labels N int32 (0-based). Used by dlscale.partition for every subset
    and by the class-data sharing warm-up for its synthetic one; it lives here, beside its reader,
    because dlscale.partition needs pyarrow, which the trainer environment lacks."""
    import numpy as np

    np.save(os.path.join(folder, SUBSET_ARRAYS[0]), np.ascontiguousarray(images))
    np.save(os.path.join(folder, SUBSET_ARRAYS[1]), np.asarray(labels).astype(np.int32))


def load_samples(sc, data_dir: str, partitions: int):
    """Read a subset's arrays (``_images.npy``, ``_labels.npy``, written by dlscale.partition)
    into a cached RDD of Samples, materialised here so that the data-load phase is timed on its
    own, not inside the first training iteration. Returns the RDD, its records and what the
    Python workers that loaded it could use (``executor_view``).

    One partition per core: task ``i`` of ``p`` maps the files and takes every p-th record from
    the i-th (the parts are class-balanced and shuffled, so every partition is too), and converts
    them vectorised. No Spark SQL: on a cold driver, planning a Parquet read cost 1.5-10 s, and
    its first conversion more than the arrays' whole load (README, Performance)."""
    from pyspark.accumulators import AccumulatorParam

    class Appended(AccumulatorParam):
        """A list that tasks append to."""

        def zero(self, value):
            return []

        def addInPlace(self, collected, more):
            return collected + more

    tick = time.time()
    images_path, labels_path = (os.path.join(data_dir, name) for name in SUBSET_ARRAYS)
    # each loader's (records, executor_view()), reported with its task's result
    loaders = sc.accumulator([], Appended())

    def load_partition(index, _):
        import numpy as np

        images = np.load(images_path, mmap_mode="r")[index::partitions]
        labels = np.load(labels_path, mmap_mode="r")[index::partitions]
        loaders.add([(len(labels), executor_view())])
        return to_samples(images, labels)

    samples = sc.parallelize(range(partitions), partitions).mapPartitionsWithIndex(load_partition).cache()
    # Materialise the cache by counting its pickled batches in the JVM (pyspark's own count
    # would have a second Python worker unpickle every record again, README step 15).
    samples._jrdd.count()
    count = sum(records for records, _ in loaders.value)
    views = {json.dumps(view, sort_keys=True) for _, view in loaders.value}
    print("dlscale.trainer: %s: %d records in %d partitions, loaded in %.1f s"
          % (data_dir, count, samples.getNumPartitions(), time.time() - tick), file=sys.stderr, flush=True)
    return samples, count, [json.loads(view) for view in sorted(views)]


def executor_view() -> Dict[str, Any]:
    """What the Python worker running this (on an executor) can use: host, CPUs, threads, and
    which kernels MKL was told to take (it inherits its executor's environment)."""
    import socket

    return {
        "host": socket.gethostname(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_DEBUG_CPU_TYPE": os.environ.get("MKL_DEBUG_CPU_TYPE"),  # dlscale.spark_node.mkl_cpu_setting
        # the executor JVM's library path first: BigDL's MKL extracted once (dlscale.jvm_cds)
        "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH"),
    }


def driver_mkl_library() -> Optional[str]:
    """The libjmkl.so that the driver JVM (this process's parent: spark-submit's PythonRunner
    starts the trainer) mapped: from the library path, or a temporary copy that BigDL's loader
    inflated from its jar and deleted once loaded ("... (deleted)")."""
    try:
        with open("/proc/%d/maps" % os.getppid()) as handle:
            for line in handle:
                fields = line.split(None, 5)
                if len(fields) == 6 and "/libjmkl.so" in fields[5]:
                    return fields[5].strip()
    except OSError:
        pass
    return None


def jvm_options_in_force(sc, conf) -> Dict[str, str]:
    """The JVM options of the driver and of the executors as they run: the driver's as spark-submit
    started its JVM (it set them as system properties too; BigDL's ``init_nncontext`` then puts
    its own ``-Dlog4j2.info`` into the SparkConf, which no running JVM has), the executors' from
    the SparkConf ``conf`` of the SparkContext that launched them."""
    return {
        "spark.driver.extraJavaOptions": sc._jvm.System.getProperty("spark.driver.extraJavaOptions"),
        "spark.executor.extraJavaOptions": conf.get("spark.executor.extraJavaOptions", None),
    }


def start_context():
    """The SparkContext (its SparkConf from spark-submit) and BigDL's Engine, as ``init_nncontext``
    starts them, except on an in-driver cluster (Spark's ``local-cluster[1,c,mb]`` master,
    dlscale.cluster): BigDL 2.4.0's Engine cannot parse that URL ("Can't parse master"), so it is
    given its one node and ``spark.executor.cores`` itself, with the Engine.init(nodes, cores,
    onSpark) that BigDL keeps (deprecated; it logs a warning) for this."""
    from bigdl.dllib.nncontext import check_version, getOrCreateSparkContext, init_nncontext
    from bigdl.dllib.utils.common import redire_spark_logs, show_bigdl_info_logs
    from bigdl.dllib.utils.utils import set_python_home

    sc = getOrCreateSparkContext()  # what init_nncontext starts with
    if not sc.master.startswith("local-cluster["):
        return init_nncontext()
    # init_nncontext's steps, in its order, with the Engine's start replaced
    sc.setLogLevel("WARN")
    check_version()
    redire_spark_logs()
    show_bigdl_info_logs()
    cores = int(sc._conf.get("spark.executor.cores"))  # not sc.getConf(): see train()
    sc._jvm.com.intel.analytics.bigdl.dllib.utils.Engine.init(1, cores, True)
    sc._jvm.org.apache.spark.bigdl.api.python.BigDLSerDe.initialize()  # what init_engine adds
    set_python_home()
    return sc


def last_loss(summary) -> float:
    losses = summary.read_scalar("Loss")
    return float(losses[-1][1]) if len(losses) else float("nan")


def train(args: argparse.Namespace) -> Dict[str, Any]:
    from bigdl.dllib.nn.criterion import CrossEntropyCriterion
    from bigdl.dllib.optim.optimizer import MaxEpoch, Optimizer, Top1Accuracy, TrainSummary
    from bigdl.dllib.utils.common import get_node_and_core_number

    timings: Dict[str, float] = {}
    started = time.time()
    sc = start_context()
    timings["context_start"] = time.time() - started

    tick = time.time()
    # one partition per core: the training set's loaders ran on every executor (each holds its
    # share of the cache), so their view is every executor's
    train_rdd, train_records, executors = load_samples(sc, args.train_dir, args.cores)
    test_rdd, test_records, _ = load_samples(sc, args.test_dir, args.cores)
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
    # The context's own SparkConf, read key by key: sc.getConf() copies every entry through py4j
    # (0.1 s at 1 core; pyspark keeps the JVM's conf as sc._conf)
    conf = sc._conf
    result = {
        "train_records": train_records,
        "test_records": test_records,
        "timings_s": timings,
        "final_loss": last_loss(summary),
        "test_accuracy": float(accuracy),
        "records_per_s": train_records * args.epochs / timings["train"],
        "executors": executors,
        "spark_conf": {
            key: conf.get(key, None)
            for key in ("spark.master", "spark.executor.cores", "spark.cores.max", "spark.authenticate")
        },
        "jvm_options": jvm_options_in_force(sc, conf),
        "bigdl_engine": {"nodes": int(engine_nodes), "cores_per_node": int(engine_cores)},
        "mkl_library": driver_mkl_library(),
        "versions": {
            "python": platform.python_version(),
            "java": sc._jvm.System.getProperty("java.version"),
            "spark": sc.version,
            "bigdl": version("bigdl-dllib-spark3"),
        },
    }
    # On the cell's clock: it times the driver's start before ``begin`` and its stop after the
    # trainer's phases (dlscale.phases), so that no second of the cell goes unaccounted.
    result["clock"] = {"begin": started}
    # The result first: the cell goes on to its teardown as soon as it is there, which ends this
    # driver with the rest of the cluster (dlscale.cell.run_trainer). Its own stop, when it gets
    # that far (a warm-up run, or the driver alone), is Spark's usual one.
    write_result(args.out, result)
    sc.stop()
    return result


def write_result(path: str, result: Dict[str, Any]) -> None:
    """Atomically: the cell reads the file as soon as it exists."""
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(tmp, path)


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
    try:
        train(parse_args(argv))  # writes the result to --out
    except BaseException:
        # Stop the application before the interpreter exits: otherwise the JVM's shutdown stops an
        # in-driver worker while its master still serves the application, and the master has
        # the worker launch replacement executors that fail ("Shutdown hooks cannot be modified").
        from pyspark import SparkContext

        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
