"""Stratified subsets and the Parquet parts the trainer reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from dlscale.datasets import RAW_FILE_NAMES, sha256_of_file
from dlscale.paths import SUBSET_ARRAYS
from dlscale.partition import (
    MANIFEST_NAME,
    class_quotas,
    partition_subset,
    partition_test,
    stratified_subset_indices,
    write_parquet_parts,
)

# An unbalanced label vector (class c has 100 + 37c records), like MNIST's uneven classes.
SKEWED = np.repeat(np.arange(10), [100 + 37 * c for c in range(10)]).astype(np.uint8)
np.random.default_rng(5).shuffle(SKEWED)


# --- subset selection --------------------------------------------------------------------


def test_quotas_largest_remainder_exact_and_proportional():
    for size in (1, 7, 10, 99, 500, 1234, len(SKEWED)):
        quotas = class_quotas(SKEWED, size)
        assert sum(quotas.values()) == size
        counts = np.bincount(SKEWED)
        for cls, quota in quotas.items():
            assert abs(quota - size * counts[cls] / len(SKEWED)) < 1, (size, cls)


def test_quotas_hand_computed():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)  # shares .5 .3 .2
    # size 4: exact 2.0 / 1.2 / 0.8 -> floors 2/1/0, one left over to the largest remainder (class 2)
    assert class_quotas(labels, 4) == {0: 2, 1: 1, 2: 1}
    # size 5: exact 2.5 / 1.5 / 1.0 -> floors 2/1/1, tie on .5 broken by the smaller label
    assert class_quotas(labels, 5) == {0: 3, 1: 1, 2: 1}


def test_subset_exact_size_stratified_and_sorted():
    chosen = stratified_subset_indices(SKEWED, 500, seed=3)
    assert len(chosen) == 500 == len(np.unique(chosen))
    assert np.all(np.diff(chosen) > 0)
    got = np.bincount(SKEWED[chosen], minlength=10)
    expected = 500 * np.bincount(SKEWED) / len(SKEWED)
    assert np.all(np.abs(got - expected) < 1)


def test_subset_deterministic_per_seed():
    first = stratified_subset_indices(SKEWED, 300, seed=11)
    assert np.array_equal(first, stratified_subset_indices(SKEWED.copy(), 300, seed=11))
    assert not np.array_equal(first, stratified_subset_indices(SKEWED, 300, seed=12))


def test_smaller_subset_nested_in_larger():
    sizes = (50, 200, 800, 2000)
    subsets = [set(stratified_subset_indices(SKEWED, size, seed=7).tolist()) for size in sizes]
    for small, large in zip(subsets, subsets[1:]):
        assert small < large
    # a different seed gives a different nest
    assert not subsets[0] <= set(stratified_subset_indices(SKEWED, 800, seed=8).tolist())


def test_nesting_holds_per_class_even_if_a_quota_shrinks():
    """Per class, the smaller pick is always the head of the larger one (or vice versa)."""
    for small, large in ((13, 14), (101, 102), (999, 1000)):
        a, b = (stratified_subset_indices(SKEWED, n, seed=2) for n in (small, large))
        for cls in range(10):
            in_a, in_b = set(a[SKEWED[a] == cls].tolist()), set(b[SKEWED[b] == cls].tolist())
            assert in_a <= in_b or in_b <= in_a


def test_whole_dataset_is_allowed():
    assert len(stratified_subset_indices(SKEWED, len(SKEWED), seed=0)) == len(SKEWED)


def test_size_too_large_names_available_records_and_fix():
    with pytest.raises(
        ValueError, match=rf"subset size 99999 is larger than the toy split, which has {len(SKEWED)} records.*config"
    ):
        stratified_subset_indices(SKEWED, 99999, seed=0, source="the toy split")


@pytest.mark.parametrize("size, seed", [(0, 0), (10, -1)])
def test_size_and_seed_must_be_valid(size, seed):
    with pytest.raises(ValueError):
        stratified_subset_indices(SKEWED, size, seed)


# --- Parquet parts -------------------------------------------------------------------------


def _read_parts(out_dir: Path):
    return pq.read_table(sorted(out_dir.glob("part-*.parquet")))


def test_parquet_parts_round_trip(tmp_path, idx_factory):
    images, labels = idx_factory.arrays(103, seed=4)
    out = tmp_path / "parts"
    manifest = write_parquet_parts(images, labels, out, n_files=4, seed=9, manifest={"dataset": "tiny"})
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_NAME, *SUBSET_ARRAYS] + [f"part-{i:05d}.parquet" for i in range(4)])
    table = _read_parts(out)
    assert table.num_rows == 103
    assert table.schema.field("image").type == "binary" and table.schema.field("label").type == "int32"
    # every row is an original (image, label) pair, each exactly once
    got = {(bytes(img), int(lbl)) for img, lbl in zip(table["image"].to_pylist(), table["label"].to_pylist())}
    assert got == {(img.tobytes(), int(lbl)) for img, lbl in zip(images, labels)}
    assert all(len(img) == 784 for img in table["image"].to_pylist())
    on_disk = json.loads((out / MANIFEST_NAME).read_text())
    assert on_disk == manifest
    assert on_disk["dataset"] == "tiny" and on_disk["records"] == 103 and on_disk["n_files"] == 4
    assert on_disk["class_counts"] == {str(c): int(n) for c, n in enumerate(np.bincount(labels))}
    assert sum(on_disk["file_records"]) == 103


def test_arrays_hold_the_parts_records_in_the_parts_order(tmp_path, idx_factory):
    """The BigDL trainer's input (the arrays) is the PyTorch baseline's (the parts), row for row."""
    images, labels = idx_factory.arrays(103, seed=4)
    write_parquet_parts(images, labels, tmp_path / "parts", n_files=4, seed=9)
    table = _read_parts(tmp_path / "parts")
    image_file, label_file = (tmp_path / "parts" / name for name in SUBSET_ARRAYS)
    arrays_images, arrays_labels = np.load(image_file), np.load(label_file)
    assert arrays_images.dtype == np.uint8 and arrays_images.shape == (103, 28, 28)
    assert arrays_labels.dtype == np.int32 and arrays_labels.tolist() == table["label"].to_pylist()
    assert [img.tobytes() for img in arrays_images] == table["image"].to_pylist()


def test_folder_readable_whole_despite_manifest(tmp_path, idx_factory):
    """Spark/pyarrow read the folder as a whole; the manifest and the arrays must not be taken
    for Parquet."""
    images, labels = idx_factory.arrays(40)
    write_parquet_parts(images, labels, tmp_path / "parts", n_files=2)
    assert pads.dataset(tmp_path / "parts", format="parquet").count_rows() == 40
    # positive control: the same arrays without their leading underscore break the read
    (tmp_path / "parts" / SUBSET_ARRAYS[1].lstrip("_")).write_bytes((tmp_path / "parts" / SUBSET_ARRAYS[1]).read_bytes())
    with pytest.raises(Exception, match="Parquet"):
        pads.dataset(tmp_path / "parts", format="parquet").count_rows()


def test_every_file_mixes_classes_in_proportion(tmp_path):
    labels = np.repeat(np.arange(10), 30).astype(np.uint8)  # sorted by class on purpose
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    write_parquet_parts(images, labels, tmp_path / "parts", n_files=3, seed=1)
    for part in sorted((tmp_path / "parts").glob("part-*.parquet")):
        file_labels = np.array(pq.read_table(part)["label"].to_pylist())
        assert np.bincount(file_labels, minlength=10).tolist() == [10] * 10
        assert np.any(np.diff(file_labels) != 0) and not np.all(np.diff(file_labels) >= 0)  # shuffled, not sorted


def test_parts_deterministic_per_seed(tmp_path, idx_factory):
    images, labels = idx_factory.arrays(50)
    for name in ("a", "b"):
        write_parquet_parts(images, labels, tmp_path / name, n_files=2, seed=5)
    write_parquet_parts(images, labels, tmp_path / "c", n_files=2, seed=6)
    rows = {name: _read_parts(tmp_path / name)["label"].to_pylist() for name in "abc"}
    assert rows["a"] == rows["b"] != rows["c"]


def test_failed_write_leaves_no_folder(tmp_path, idx_factory):
    images, labels = idx_factory.arrays(20)
    with pytest.raises(ValueError, match="labels must have shape"):
        write_parquet_parts(images, labels[:-1], tmp_path / "parts", n_files=2)
    with pytest.raises(ValueError, match="n_files must be between 1 and the number of records"):
        write_parquet_parts(images, labels, tmp_path / "parts", n_files=21)
    with pytest.raises(ValueError, match="uint8"):
        write_parquet_parts(images.astype(np.int64), labels, tmp_path / "parts", n_files=2)
    assert list(tmp_path.iterdir()) == []


def test_failure_inside_build_leaves_previous_result_and_no_temp(tmp_path, idx_factory, monkeypatch):
    images, labels = idx_factory.arrays(20)
    out = tmp_path / "parts"
    write_parquet_parts(images, labels, out, n_files=2)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)  # a local failure, not the network
    with pytest.raises(OSError, match="No space"):
        write_parquet_parts(images, labels, out, n_files=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]  # no temp folder left
    assert _read_parts(out).num_rows == 20  # the previous complete result is untouched


def test_rewrite_replaces_previous_folder(tmp_path, idx_factory):
    out = tmp_path / "parts"
    write_parquet_parts(*idx_factory.arrays(30), out, n_files=3)
    write_parquet_parts(*idx_factory.arrays(20), out, n_files=2)
    assert len(list(out.glob("part-*.parquet"))) == 2 and _read_parts(out).num_rows == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


# --- glue and the Snakemake script ----------------------------------------------------------


def test_partition_subset_and_test(tmp_path, idx_factory):
    raw = idx_factory.write_raw_dir(tmp_path / "raw", n_train=200, n_test=50)
    manifest = partition_subset(raw, "tiny", size=64, seed=3, n_files=2, out_dir=tmp_path / "n64")
    assert _read_parts(tmp_path / "n64").num_rows == 64
    assert manifest["split"] == "train" and manifest["subset_size"] == 64 and manifest["seed"] == 3
    assert manifest["source_files"]["train-images-idx3-ubyte.gz"]["sha256"] == sha256_of_file(
        raw / "train-images-idx3-ubyte.gz"
    )

    full = partition_test(raw, "tiny", tmp_path / "test", n_files=1)
    assert full["records"] == 50 and full["split"] == "test" and full["subset_size"] is None
    part = partition_test(raw, "tiny", tmp_path / "test20", n_files=2, test_size=20)
    assert _read_parts(tmp_path / "test20").num_rows == 20 == part["records"]


def test_the_manifests_carry_the_number_of_classes_of_the_training_labels(tmp_path, idx_factory):
    raw = idx_factory.write_raw_dir(tmp_path / "raw", n_train=60, n_test=12, n_classes=3)
    # a subset too small to hold every class still says 3: the model is the whole dataset's
    assert partition_subset(raw, "three", size=2, seed=0, n_files=1, out_dir=tmp_path / "n2")["n_classes"] == 3
    assert partition_test(raw, "three", tmp_path / "test", n_files=1)["n_classes"] == 3
    assert json.loads((tmp_path / "n2" / MANIFEST_NAME).read_text())["n_classes"] == 3


def test_a_test_label_the_training_split_lacks_is_refused(tmp_path, idx_factory):
    raw = idx_factory.write_raw_dir(tmp_path / "raw", n_train=60, n_test=12, n_classes=3)
    idx_factory.write_split(raw, "test", 12, n_classes=4)
    with pytest.raises(ValueError, match=r"test label 3 found, but the training labels have classes 0\.\.2"):
        partition_test(raw, "three", tmp_path / "test", n_files=1)
    assert not (tmp_path / "test").exists()


def test_partition_subset_too_large_names_dataset(tmp_path, idx_factory):
    raw = idx_factory.write_raw_dir(tmp_path / "raw", n_train=30, n_test=10)
    with pytest.raises(ValueError, match=r"larger than the tiny training split, which has 30 records\. Fix: use sizes of at most 30"):
        partition_subset(raw, "tiny", size=31, seed=0, n_files=1, out_dir=tmp_path / "n31")
    assert not (tmp_path / "n31").exists()


def test_scripts_under_snakemake_object(tmp_path, idx_factory, run_script):
    """download.py (offline) then partition.py for a subset and the test split, via params as in the rules."""
    offline = idx_factory.write_raw_dir(tmp_path / "offline", n_train=120, n_test=30)
    raw = tmp_path / "resources" / "fashion-mnist" / "raw"
    raw_files = [raw / name for name in RAW_FILE_NAMES]
    # fashion-mnist's content digests refuse the synthetic files: the error must reach the log
    done = run_script(
        "download.py",
        input=[],
        output=raw_files,
        params={"dataset": "fashion-mnist", "offline_dir": str(offline), "mirrors": None},
        log=[tmp_path / "download.log"],
    )
    assert done.returncode != 0
    assert "checksum mismatch" in (tmp_path / "download.log").read_text()
    assert list(raw.iterdir()) == []  # nothing half-installed

    for path in raw_files:  # stand-in for a finished download rule
        path.write_bytes((offline / path.name).read_bytes())
    common = {"dataset": "fashion-mnist", "seed": 4, "n_files": 2, "test_size": None}
    subset = tmp_path / "resources" / "fashion-mnist" / "subsets" / "n40"
    done = run_script(
        "partition.py",
        input=raw_files,
        output=[subset],
        params={**common, "size": 40, "split": "train"},
        log=[tmp_path / "p.log"],
    )
    assert done.returncode == 0, done.stderr
    assert _read_parts(subset).num_rows == 40
    assert "wrote 40 records in 2 files" in (tmp_path / "p.log").read_text()

    test = tmp_path / "resources" / "fashion-mnist" / "test"
    done = run_script(
        "partition.py",
        input=raw_files,
        output=[test],
        params={**common, "size": None, "split": "test"},
        log=[tmp_path / "t.log"],
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((test / MANIFEST_NAME).read_text())["records"] == 30
