"""Stratified training subsets and test split, written for the trainers.

Output folder layout (one per subset, one for the test split)::

    _images.npy, _labels.npy                           N x 28 x 28 uint8, N int32: the BigDL
                                                       trainer's input (its executors map them)
    part-00000.parquet ... part-<n_files-1>.parquet   the same records as Parquet, columns
                                                       image (binary), label (int32): the PyTorch
                                                       baseline's input, and any Parquet reader's
    _manifest.json                                     what the folder holds and where it came from

The arrays hold the parts' records in the parts' order (part 0's rows first). Why two forms:
reading the Parquet parts through Spark SQL cost the BigDL cell 1.5-10 s of query planning and
code generation on its cold driver, and a first conversion in the executors (issue 13); the arrays
are read by each executor's Python worker with ``numpy.load`` and no Spark SQL at all.

``image`` is the 784 raw uint8 pixels of one 28x28 image, row-major; ``label`` is the class
0..n_classes-1. The manifest's ``n_classes`` is counted from the whole training split's labels
(:func:`dlscale.idx.class_count`), the same for every subset and the test split, and sizes the
model's last layer (``dlscale.trainer.manifest_classes``).
The leading underscores matter: Spark and pyarrow skip files starting with "_" or ".", so the
folder's Parquet parts can be read whole (``spark.read.parquet(dir)``); a plain ``manifest.json``
or ``images.npy`` would be parsed as a Parquet file and fail the read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dlscale import __version__
from dlscale.datasets import sha256_of_file
from dlscale.paths import SUBSET_ARRAYS
from dlscale.idx import check_test_classes, class_count, load_split, read_labels, split_file_names, split_paths
from dlscale.trainer import save_subset_arrays

MANIFEST_NAME = "_manifest.json"  # "_": skipped by Spark/pyarrow folder readers
PART_GLOB = "part-*.parquet"
# Seed-sequence tags, so the per-class selection and the row shuffle draw independent streams.
_SELECT_STREAM = 1
_SHUFFLE_STREAM = 2


# --- subset selection --------------------------------------------------------------------


def class_quotas(labels: np.ndarray, size: int) -> dict[int, int]:
    """Records per class in a stratified sample of ``size``: largest-remainder apportionment.

    Each class gets floor(size * share), and the records left over go one each to the classes
    with the largest remainders (ties: smaller class label first). Integer arithmetic only, so
    the result is exact and the quotas sum to ``size``; each is within 1 of size * share.
    """
    classes, counts = np.unique(labels, return_counts=True)
    total = int(counts.sum())
    numerators = [size * int(count) for count in counts]
    quotas = [numerator // total for numerator in numerators]
    by_remainder = sorted(range(len(classes)), key=lambda i: (-(numerators[i] % total), int(classes[i])))
    for i in by_remainder[: size - sum(quotas)]:
        quotas[i] += 1
    return {int(cls): quota for cls, quota in zip(classes, quotas)}


def stratified_subset_indices(labels: np.ndarray, size: int, seed: int, source: str = "the split") -> np.ndarray:
    """Sorted indices of a class-stratified random subset of ``size`` records of ``labels``.

    Deterministic: the same labels, size and seed give the same indices. Each class's records
    are permuted once by a generator seeded with (seed, class), independent of ``size``, and its
    quota (:func:`class_quotas`) is taken from the head of that permutation. So for one seed a
    smaller subset is contained in a larger one whenever no class's quota shrinks as the size
    grows; largest-remainder can, rarely, give a class one record fewer at a larger size (the
    "Alabama paradox"), and only that class then loses nesting, by that one record.

    ``source`` names the labels in the error raised when ``size`` exceeds their count.
    """
    labels = np.asarray(labels)
    _check_size(size, len(labels), source)
    _check_seed(seed)
    chosen = []
    for cls, quota in class_quotas(labels, size).items():
        members = np.flatnonzero(labels == cls)
        order = np.random.default_rng([seed, _SELECT_STREAM, cls]).permutation(len(members))
        chosen.append(members[order[:quota]])
    return np.sort(np.concatenate(chosen))


def _check_size(size: int, available: int, source: str) -> None:
    if size < 1:
        raise ValueError(f"subset size must be a positive number of records, got {size}")
    if size > available:
        raise ValueError(
            f"subset size {size} is larger than {source}, which has {available} records. "
            f"Fix: use sizes of at most {available} in the config."
        )


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


# --- Parquet output ----------------------------------------------------------------------


def write_parquet_parts(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    n_files: int,
    seed: int = 0,
    manifest: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``images`` (N x 28 x 28 uint8) and ``labels`` (N) as ``n_files`` Parquet parts, and
    the same records, in the parts' order, as ``_images.npy`` and ``_labels.npy``.

    Rows are dealt out class by class, round-robin, so every file gets each class in (within
    one record) the same proportion, then shuffled within each file; all driven by ``seed``.
    The folder is built as a temp sibling and renamed into place, so ``out_dir`` either holds a
    complete result or does not exist. ``manifest`` entries are merged into ``_manifest.json``
    alongside the computed ones (records, class counts, files); the manifest is returned.
    """
    images, labels = _checked_arrays(images, labels)
    _check_n_files(n_files, len(labels))
    _check_seed(seed)
    out = Path(out_dir)
    rows_per_file = _deal_rows(labels, n_files, seed)
    files = [f"part-{i:05d}.parquet" for i in range(n_files)]
    record = {
        **(manifest or {}),
        "records": int(len(labels)),
        "class_counts": _class_counts(labels),
        "seed": seed,
        "n_files": n_files,
        "files": files,
        "arrays": list(SUBSET_ARRAYS),
        "file_records": [int(len(rows)) for rows in rows_per_file],
        "columns": {"image": "binary: 784 uint8 pixels of a 28x28 image, row-major", "label": "int32 class number"},
        "created_by": f"dlscale {__version__}",
    }

    def build(tmp_dir: Path) -> None:
        for name, rows in zip(files, rows_per_file):
            pq.write_table(_table(images[rows], labels[rows]), tmp_dir / name)
        in_part_order = np.concatenate(rows_per_file)
        save_subset_arrays(tmp_dir, images[in_part_order], labels[in_part_order])
        (tmp_dir / MANIFEST_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")

    _build_dir_atomically(out, build)
    return record


def _checked_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be a uint8 array N x rows x cols, got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},) to match the images, got {labels.shape}")
    return images, labels


def _check_n_files(n_files: int, records: int) -> None:
    if not 1 <= n_files <= max(records, 1):
        raise ValueError(
            f"n_files must be between 1 and the number of records ({records}), got {n_files}; "
            "lower the number of Parquet files in the config."
        )


def _deal_rows(labels: np.ndarray, n_files: int, seed: int) -> list[np.ndarray]:
    """Row indices of each file: classes dealt round-robin across files, then shuffled per file."""
    rng = np.random.default_rng([seed, _SHUFFLE_STREAM])
    shuffled = rng.permutation(len(labels))
    by_class = shuffled[np.argsort(labels[shuffled], kind="stable")]  # grouped by class, random within
    return [rng.permutation(by_class[i::n_files]) for i in range(n_files)]


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    classes, counts = np.unique(labels, return_counts=True)
    return {str(int(cls)): int(count) for cls, count in zip(classes, counts)}


def _table(images: np.ndarray, labels: np.ndarray) -> pa.Table:
    """A table of images as binary values (one buffer, fixed offsets: no per-row Python objects)."""
    n, width = len(images), int(np.prod(images.shape[1:]))
    pixels = np.ascontiguousarray(images).reshape(-1)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    image_column = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(pixels)])
    return pa.table({"image": image_column, "label": pa.array(labels.astype(np.int32), type=pa.int32())})


def _build_dir_atomically(out: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp_dir)`` in a temp sibling of ``out``, then rename it to ``out``.

    A previous ``out`` is moved aside first (a rename cannot replace a non-empty folder) and
    removed only after the new folder is in place.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = out.parent / f"{tmp.name}.old"
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes 0700
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# --- glue for the workflow -----------------------------------------------------------------


def partition_subset(
    raw_dir: str | Path, dataset: str, size: int, seed: int, n_files: int, out_dir: str | Path
) -> dict[str, Any]:
    """Write a stratified subset of ``size`` training records of ``dataset`` to ``out_dir``."""
    images, labels = load_split(raw_dir, "train")
    n_classes = class_count(labels, split_paths(raw_dir, "train")[1])
    chosen = stratified_subset_indices(labels, size, seed, source=f"the {dataset} training split")
    manifest = dict(_provenance(raw_dir, dataset, "train", subset_size=size), n_classes=n_classes)
    return write_parquet_parts(images[chosen], labels[chosen], out_dir, n_files, seed, manifest)


def partition_test(
    raw_dir: str | Path,
    dataset: str,
    out_dir: str | Path,
    n_files: int,
    test_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the test split of ``dataset`` to ``out_dir``: all of it, or a stratified ``test_size``."""
    images, labels = load_split(raw_dir, "test")
    # The classes are the training split's: the model has one output for each of them.
    train_labels_path = split_paths(raw_dir, "train")[1]
    n_classes = class_count(read_labels(train_labels_path), train_labels_path)
    check_test_classes(labels, split_paths(raw_dir, "test")[1], n_classes)
    if test_size is not None:
        chosen = stratified_subset_indices(labels, test_size, seed, source=f"the {dataset} test split")
        images, labels = images[chosen], labels[chosen]
    manifest = dict(_provenance(raw_dir, dataset, "test", subset_size=test_size), n_classes=n_classes)
    return write_parquet_parts(images, labels, out_dir, n_files, seed, manifest)


def _provenance(raw_dir: str | Path, dataset: str, split: str, subset_size: int | None) -> dict[str, Any]:
    sources = {}
    for name in split_file_names(split):
        path = Path(raw_dir) / name
        if not path.is_file():  # load_split also accepts the plain (not .gz) file
            path = path.with_suffix("")
        sources[path.name] = {"sha256": sha256_of_file(path)}
    return {"dataset": dataset, "split": split, "subset_size": subset_size, "source_files": sources}
