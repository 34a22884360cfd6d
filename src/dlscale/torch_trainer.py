"""The PyTorch peer of a BigDL cell: the same model, data, batch and optimizer, on the CPU.

Run as ``python -m dlscale.torch_trainer`` (the ``train_cell_torch`` rule, in the torch
environment) with the same arguments as ``dlscale.cell``, and writes a ``metrics.json`` of the
same schema with ``backend: torch``, so that the tables and figures put both side by side per
(cores, size).

Same as the BigDL cell:

- the CPUs: ``dlscale.cpu_claims.claimed_cpus`` claims and confines the process to ``cores`` CPUs
  (the same per-CPU lock files, so a torch cell never shares a CPU with another cell), and
  PyTorch runs ``cores`` intra-op threads (``torch.set_num_threads``), one inter-op thread;
- the data: the same Parquet subsets (784 raw bytes + label), normalised with the same
  constants (``dlscale.trainer.MNIST_MEAN``/``MNIST_STD``), shuffled every epoch;
- the model: LSTM(28 -> 128) over the 28 rows of an image, its last step, Linear(128 -> n_classes)
  (the dataset's classes, ``dlscale.trainer.manifest_classes``: 10 for MNIST),
  cross-entropy, Adam (or SGD) with the same learning rate, the global batch of
  ``dlscale.cell.global_batch`` (64 for strong scaling, 64 x cores for weak scaling), the seed.

There is no cluster: ``cluster_start``, ``cluster_stop`` and the driver's start and stop are 0,
``context_start`` is the import of torch and the thread set-up; like a BigDL cell's, the total runs
from the process's start (``cell_start``) until its metrics are written (``cell_exit``).

Failures end as a BigDL cell's do (the same handlers, ``dlscale.cell_process``): SIGTERM, SIGINT
and SIGUSR1 (scancel, the walltime, Ctrl-C) raise ``Terminated`` in the main thread, later ones are ignored
while it stops; ``--exit-with-parent`` (the rule ``exec``s the cell, so its parent is Snakemake)
stops it when a killed Snakemake leaves it orphaned; any failure releases the CPU claims, writes
no metrics.json (it is written atomically, last) and logs one ``FAILED: ...`` line; the exit
code is 1. There is nothing else to tear down: no daemons, no scratch.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import logging
import os
import platform
import socket
import sys
import time
from typing import List, Optional, Tuple

from dlscale import hoststat
from dlscale.cell import global_batch, metrics_record, parse_args, record_cell
from dlscale.cpu_claims import claimed_cpus
from dlscale.phases import process_started_at
from dlscale.trainer import MNIST_MEAN, MNIST_STD, PIXELS, manifest_classes

log = logging.getLogger("dlscale.torch_trainer")


def read_parquet_dir(directory: str) -> Tuple["object", "object"]:
    """(images float32 [n, 28, 28] normalised as the BigDL trainer does, labels int64 0..9)."""
    import numpy as np
    import pyarrow.parquet as pq

    parts = sorted(glob.glob(os.path.join(directory, "part-*.parquet")))
    if not parts:
        raise FileNotFoundError("no part-*.parquet in %s" % directory)
    tables = [pq.read_table(part, columns=["image", "label"]) for part in parts]
    images = b"".join(b for table in tables for b in table.column("image").to_pylist())
    labels = np.concatenate([table.column("label").to_numpy() for table in tables]).astype(np.int64)
    pixels = np.frombuffer(images, dtype=np.uint8).reshape(-1, 28, 28).astype(np.float32) / 255.0
    if len(pixels) != len(labels) or pixels.shape[1] * pixels.shape[2] != PIXELS:
        raise ValueError("malformed subset %s: %d images, %d labels" % (directory, len(pixels), len(labels)))
    return (pixels - MNIST_MEAN) / MNIST_STD, labels


def build_model(input_size: int = 28, hidden_size: int = 128, n_classes: int = 10):
    """The published model: LSTM over the 28 rows, last step, Linear to the classes."""
    import torch
    from torch import nn

    class LastStepLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
            self.linear = nn.Linear(hidden_size, n_classes)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            out, _ = self.lstm(x)
            return self.linear(out[:, -1, :])

    return LastStepLSTM()


def make_optimizer(name: str, params, learning_rate: float):
    if name not in ("adam", "sgd"):
        raise ValueError("unknown optimizer %r: use adam or sgd" % name)
    import torch

    if name == "adam":
        return torch.optim.Adam(params, lr=learning_rate)
    return torch.optim.SGD(params, lr=learning_rate)


def train_and_evaluate(args: argparse.Namespace, batch_size: int) -> dict:
    """Every timed phase but the CPU claim; returns the trainer part of metrics.json."""
    timings = {}
    tick = time.time()
    import numpy as np
    import torch

    torch.set_num_threads(args.cores)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (e.g. a second call in one process, in tests)
        pass
    torch.manual_seed(args.seed)
    timings["context_start"] = time.time() - tick

    tick = time.time()
    train_x, train_y = read_parquet_dir(args.train_dir)
    test_x, test_y = read_parquet_dir(args.test_dir)
    train_x, train_y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    test_x, test_y = torch.from_numpy(test_x), torch.from_numpy(test_y)
    timings["data_load"] = time.time() - tick

    tick = time.time()
    model = build_model(n_classes=manifest_classes(args.train_dir))
    log.info("model: %s", model)  # shows the last layer's outputs, one per class
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.learning_rate)
    generator = torch.Generator().manual_seed(args.seed)
    n = len(train_y)
    loss = torch.tensor(float("nan"))
    log.info("training: %d records, %d epoch(s), global batch %d", n, args.epochs, batch_size)
    timings["model_setup"] = time.time() - tick
    tick = time.time()
    model.train()
    for _epoch in range(args.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(train_x[index]), train_y[index])
            loss.backward()
            optimizer.step()
    timings["train"] = time.time() - tick

    tick = time.time()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(test_y), batch_size):
            logits = model(test_x[start:start + batch_size])
            correct += int((logits.argmax(dim=1) == test_y[start:start + batch_size]).sum())
    timings["evaluate"] = time.time() - tick

    return {
        "timings_s": timings,
        "train_records": n,
        "test_records": int(len(test_y)),
        "final_loss": float(loss.detach()),
        "test_accuracy": correct / len(test_y),
        "records_per_s": n * args.epochs / timings["train"],
        "threads": {
            "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": [os.environ.get("OMP_NUM_THREADS", "")],
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }


def run_cell(args: argparse.Namespace) -> dict:
    started_at = datetime.datetime.now(datetime.timezone.utc)
    t0 = process_started_at()
    batch = global_batch(args)
    log.info("claiming %d CPU(s)", args.cores)
    tick = time.time()
    with claimed_cpus(args.cores) as cpus:
        cpu_wait = time.time() - tick  # queued behind other cells for free CPUs: not the cell's time
        host_at_start = hoststat.Snapshot(cpus)  # load evidence for the benchmark
        log.info("torch cell confined to CPUs %s (asked for %d), global batch %d", cpus, args.cores, batch)
        cell_start = time.time() - t0 - cpu_wait
        result = train_and_evaluate(args, batch)
        stopped = time.time()
        seen_cpus = sorted(os.sched_getaffinity(0))
        host_load = hoststat.busy_report(host_at_start, hoststat.Snapshot(cpus))
    timings = dict(result["timings_s"], cell_start=cell_start, cluster_start=0.0, driver_start=0.0,
                   driver_stop=0.0, cluster_stop=0.0, cpu_wait=cpu_wait, _t0=t0, _stopped=stopped)
    finished_at = datetime.datetime.now(datetime.timezone.utc)
    return metrics_record(
        args, "torch", result, started_at, finished_at,
        hostnames=[socket.gethostname()],
        cpus_allowed=cpus,
        executor_cpus_allowed=seen_cpus,
        oversubscribed=len(cpus) < args.cores,
        threads=result["threads"],
        timings_s=timings,
        host_load=host_load,
    )


def main(argv: Optional[List[str]] = None) -> int:
    return record_cell(parse_args(argv), run_cell, name="torch cell", caught=(Exception,),
                       after_failure="No metrics were written", log_traceback=True)


if __name__ == "__main__":
    sys.exit(main())
