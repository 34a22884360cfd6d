"""The IDX reader: good files round-trip; every kind of damage is a clear IdxFormatError."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from dlscale.datasets import CATALOG, content_sha256_of_file
from dlscale.idx import (
    IdxFormatError,
    check_test_classes,
    class_count,
    load_split,
    read_dims,
    read_images,
    read_labels,
    split_file_names,
    write_idx,
)
from dlscale_testing import FASHION_MNIST

DEBIAN_FASHION_MNIST = FASHION_MNIST


def test_round_trip_gzip_and_plain(tmp_path, idx_factory):
    images, labels = idx_factory.arrays(12)
    gz = idx_factory.write(tmp_path / "i.gz", idx_factory.idx_bytes(images))
    plain = idx_factory.write(tmp_path / "l", idx_factory.idx_bytes(labels), gz=False)
    read_back = read_images(gz)
    assert read_back.dtype == np.uint8 and read_back.shape == (12, 28, 28)
    assert np.array_equal(read_back, images)
    assert np.array_equal(read_labels(plain), labels)
    read_back[0, 0, 0] ^= 1  # arrays are writable copies, not views of a read-only buffer


def test_gzip_detected_by_content_not_name(tmp_path, idx_factory):
    _, labels = idx_factory.arrays(11)
    plain_named_gz = idx_factory.write(tmp_path / "labels.gz", idx_factory.idx_bytes(labels), gz=False)
    assert np.array_equal(read_labels(plain_named_gz), labels)


def _expect_error(path: Path, reader, *fragments: str) -> IdxFormatError:
    with pytest.raises(IdxFormatError) as caught:
        reader(path)
    message = str(caught.value)
    assert str(path) in message
    assert "rerun to download" in message  # the fix
    for fragment in fragments:
        assert fragment in message
    return caught.value


def test_wrong_magic_not_idx(tmp_path, idx_factory):
    html = idx_factory.write(tmp_path / "x.gz", b"<html>404 Not Found</html>")
    _expect_error(html, read_images, "not an IDX file", "<html>")


def test_labels_file_read_as_images(tmp_path, idx_factory):
    _, labels = idx_factory.arrays(10)
    path = idx_factory.write(tmp_path / "swapped.gz", idx_factory.idx_bytes(labels))
    _expect_error(path, read_images, "magic 2049", "expected 3", "2051")


def test_wrong_dtype_byte(tmp_path, idx_factory):
    _, labels = idx_factory.arrays(10)
    path = idx_factory.write(tmp_path / "f.gz", idx_factory.idx_bytes(labels, dtype_code=0x0D))
    _expect_error(path, read_labels, "0x0D", "0x08")


def test_wrong_image_dimensions(tmp_path, idx_factory):
    images = np.zeros((3, 32, 32), dtype=np.uint8)
    path = idx_factory.write(tmp_path / "big.gz", idx_factory.idx_bytes(images))
    _expect_error(path, read_images, "32x32", "28x28")


def test_truncated_payload(tmp_path, idx_factory):
    images, _ = idx_factory.arrays(10)
    data = idx_factory.idx_bytes(images)[:-100]
    path = idx_factory.write(tmp_path / "short.gz", data)
    _expect_error(path, read_images, "truncated", "10 images", f"{10 * 784 - 100} bytes follow")


def test_truncated_header(tmp_path, idx_factory):
    path = idx_factory.write(tmp_path / "h.gz", bytes([0, 0, 8, 3, 0, 0]))
    _expect_error(path, read_images, "header truncated")


def test_trailing_bytes(tmp_path, idx_factory):
    _, labels = idx_factory.arrays(10)
    path = idx_factory.write(tmp_path / "long.gz", idx_factory.idx_bytes(labels) + b"\x00" * 7)
    _expect_error(path, read_labels, "7 trailing bytes")


def test_declared_count_larger_than_payload(tmp_path, idx_factory):
    _, labels = idx_factory.arrays(10)
    path = idx_factory.write(tmp_path / "l.gz", idx_factory.idx_bytes(labels, dims=(11,)))
    _expect_error(path, read_labels, "declares 11 labels")


def test_truncated_gzip(tmp_path, idx_factory):
    images, _ = idx_factory.arrays(10)
    whole = gzip.compress(idx_factory.idx_bytes(images))
    path = tmp_path / "cut.gz"
    path.write_bytes(whole[: len(whole) // 2])
    _expect_error(path, read_images, "gzip stream is truncated")


def test_corrupt_gzip(tmp_path, idx_factory):
    images, _ = idx_factory.arrays(10)
    data = bytearray(gzip.compress(idx_factory.idx_bytes(images)))
    data[-6] ^= 0xFF  # inside the CRC32 / size trailer
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(data))
    _expect_error(path, read_images, "gzip data is corrupt")


def test_load_split_reads_both_files(tmp_path, idx_factory):
    images, labels = idx_factory.write_split(tmp_path, "test", 15)
    got_images, got_labels = load_split(tmp_path, "test")
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)


def test_load_split_accepts_plain_files(tmp_path, idx_factory):
    images, labels = idx_factory.arrays(12)
    for name, array in zip(split_file_names("train"), (images, labels)):
        idx_factory.write(tmp_path / name.removesuffix(".gz"), idx_factory.idx_bytes(array), gz=False)
    assert len(load_split(tmp_path, "train")[1]) == 12


def test_load_split_count_mismatch(tmp_path, idx_factory):
    idx_factory.write_split(tmp_path, "train", 20)
    _, other_labels = idx_factory.arrays(19)
    idx_factory.write(tmp_path / "train-labels-idx1-ubyte.gz", idx_factory.idx_bytes(other_labels))
    with pytest.raises(IdxFormatError, match=r"20 images but .*train-labels.* has 19 labels.*delete both"):
        load_split(tmp_path, "train")


def test_class_count_is_the_largest_label_plus_one():
    assert class_count(np.array([2, 0, 1, 2, 1], dtype=np.uint8), "l.gz") == 3
    # more than MNIST's 10 classes is fine: the model's last layer follows
    assert class_count(np.arange(47, dtype=np.uint8), "l.gz") == 47


@pytest.mark.parametrize(
    "labels,message",
    [
        ([12] * 20, r"the largest label is 12, but classes 0, 1, .*, 9, \.\.\. have no training record"
                    r".*Fix: number the classes 0\.\.K-1 without gaps"),
        ([0, 1, 3, 3], r"classes 2 have no training record.*here 4"),
        ([0, 0, 0], r"every label is 0: one class\. Fix: give the training split at least two classes"),
        ([], r"no labels\. Fix:"),
    ],
)
def test_class_count_rejects_labels_that_are_not_classes_0_to_k(labels, message):
    with pytest.raises(IdxFormatError, match=message):
        class_count(np.array(labels, dtype=np.uint8), "train-labels.gz")


def test_test_labels_must_be_training_classes():
    check_test_classes(np.array([0, 2, 1], dtype=np.uint8), "t.gz", 3)
    with pytest.raises(IdxFormatError, match=r"test label 5 found, but the training labels have classes 0\.\.2"):
        check_test_classes(np.array([0, 5], dtype=np.uint8), "t.gz", 3)


def test_write_idx_round_trips_and_is_reproducible(tmp_path, idx_factory):
    images, labels = idx_factory.arrays(12, n_classes=3)
    write_idx(tmp_path / "i.gz", images), write_idx(tmp_path / "l", labels)
    assert np.array_equal(read_images(tmp_path / "i.gz"), images)
    assert np.array_equal(read_labels(tmp_path / "l"), labels)
    first = (tmp_path / "i.gz").read_bytes()
    assert write_idx(tmp_path / "i.gz", images).read_bytes() == first  # no gzip timestamp
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "f", images.astype(np.float32))


def test_read_dims_reads_the_header_only(tmp_path, idx_factory):
    images, labels = idx_factory.arrays(12)
    gz = idx_factory.write(tmp_path / "i.gz", idx_factory.idx_bytes(images))
    truncated = idx_factory.write(tmp_path / "l", idx_factory.idx_bytes(labels)[:-5], gz=False)
    assert read_dims(gz, ndim=3, what="images") == (12, 28, 28)
    assert read_dims(truncated, ndim=1, what="labels") == (12,)  # the payload is the partition step's
    with pytest.raises(IdxFormatError, match=r"not an IDX file: it starts with b'hello.*Fix:"):
        read_dims(idx_factory.write(tmp_path / "x", b"hello world", gz=False), ndim=1, what="labels")
    with pytest.raises(IdxFormatError, match=r"3 dimension\(s\), expected 1 for labels"):
        read_dims(gz, ndim=1, what="labels")


def test_load_split_missing_file_names_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz.*dataset\.dir"):
        load_split(tmp_path, "train")


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_split(tmp_path, "validation")


def test_real_debian_fashion_mnist():
    if not all((DEBIAN_FASHION_MNIST / entry.name).is_file() for entry in CATALOG["fashion-mnist"].files):
        pytest.fail(f"Fashion-MNIST is not installed in {DEBIAN_FASHION_MNIST}: run `make fashion-mnist` "
                    "(Debian's dataset-fashion-mnist package; `make test` does it)", pytrace=False)
    train_images, train_labels = load_split(DEBIAN_FASHION_MNIST, "train")
    test_images, test_labels = load_split(DEBIAN_FASHION_MNIST, "test")
    assert train_images.shape == (60000, 28, 28) and train_labels.shape == (60000,)
    assert test_images.shape == (10000, 28, 28) and test_labels.shape == (10000,)
    # Fashion-MNIST is balanced: 6000 / 1000 of each class
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10
    for entry in CATALOG["fashion-mnist"].files:
        assert content_sha256_of_file(DEBIAN_FASHION_MNIST / entry.name) == entry.content_sha256, entry.name
