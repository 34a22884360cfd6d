"""Strict reader for IDX files, the format of MNIST and Fashion-MNIST.

IDX layout (big-endian): two zero bytes, a data-type byte (0x08 = unsigned byte, the only type
these datasets use), a byte holding the number of dimensions, one uint32 per dimension, then the
payload in row-major order. Images have magic 2051 (0x00000803: ubyte, 3 dims N x rows x cols),
labels magic 2049 (0x00000801: ubyte, 1 dim N). Files may be gzip-compressed (detected by their
first bytes, not their name) or plain.

Every defect raises :class:`IdxFormatError` naming the file, what is wrong and how to fix it, so a
damaged download fails here rather than as a shape error deep inside training.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

UBYTE = 0x08
IMAGES_MAGIC = 2051  # 0x00000803
LABELS_MAGIC = 2049  # 0x00000801
IMAGE_SHAPE = (28, 28)  # the published model reads 28 rows of 28 pixels
GZIP_MAGIC = b"\x1f\x8b"
SPLIT_PREFIXES = {"train": "train", "test": "t10k"}  # split name -> file name prefix

_FIX = (
    "delete it and rerun to download it again; if it came from dataset.dir, "
    "check that folder holds the original, unmodified files."
)


class IdxFormatError(ValueError):
    """A file is not a valid IDX file of the expected kind.

    ``path``, ``problem`` and ``fix`` are kept apart so callers can report the problem alone
    (e.g. per download mirror) or with a fix of their own; ``str()`` gives the full message.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = _FIX) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{path}: {problem}. Fix: {fix}")


def split_file_names(split: str) -> tuple[str, str]:
    """The (images, labels) .gz file names of ``split`` ("train" or "test")."""
    try:
        prefix = SPLIT_PREFIXES[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_PREFIXES)}") from None
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


@contextmanager
def open_payload(path: str | Path) -> Iterator[BinaryIO]:
    """Open ``path`` for reading its IDX bytes: gunzipped if it is gzip, as is otherwise.

    Gzip damage only shows while reading, so errors raised inside the ``with`` block are
    translated into :class:`IdxFormatError` here, in one place.
    """
    with Path(path).open("rb") as raw:
        is_gzip = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw  # type: ignore[assignment]
        try:
            yield stream
        except EOFError as exc:
            raise IdxFormatError(path, "the gzip stream is truncated (download cut short?)") from exc
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise IdxFormatError(path, f"the gzip data is corrupt ({exc})") from exc
        finally:
            if is_gzip:
                stream.close()


def read_payload(path: str | Path) -> bytes:
    """The whole (decompressed) content of an IDX file."""
    with open_payload(path) as stream:
        return stream.read()


def parse_idx(data: bytes, path: str | Path, *, ndim: int, what: str) -> np.ndarray:
    """Check the header and payload size of IDX ``data`` and return it as a uint8 array.

    ``ndim`` is the expected number of dimensions; ``what`` ("images"/"labels") words the errors.
    """
    dims, header_size = _parse_header(data, path, ndim=ndim, what=what)
    _check_payload_size(path, dims, len(data) - header_size, what)
    # bytearray -> a writable array that owns its memory
    return np.frombuffer(bytearray(data[header_size:]), dtype=np.uint8).reshape(dims)


def _parse_header(data: bytes, path: str | Path, *, ndim: int, what: str) -> tuple[tuple[int, ...], int]:
    """(dimensions, header size) of IDX ``data``, which may be the header alone."""
    if len(data) < 4:
        raise IdxFormatError(path, f"only {len(data)} bytes, too short for an IDX header")
    if data[0:2] != b"\x00\x00":
        raise IdxFormatError(path, f"not an IDX file: it starts with {data[:8]!r}, not two zero bytes")
    magic = int.from_bytes(data[0:4], "big")
    if data[2] != UBYTE:
        raise IdxFormatError(path, f"magic {magic}: data type 0x{data[2]:02X}, expected 0x08 (unsigned byte)")
    if data[3] != ndim:
        raise IdxFormatError(
            path, f"magic {magic}: {data[3]} dimension(s), expected {ndim} for {what} (magic {0x800 + ndim})"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(path, f"header truncated: {len(data)} bytes, expected at least {header_size}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return dims, header_size


def read_dims(path: str | Path, *, ndim: int, what: str) -> tuple[int, ...]:
    """The dimensions an IDX file's header declares, reading the header only (a few bytes even
    of a .gz), so the configuration can be checked against the files before any job runs."""
    with open_payload(path) as stream:
        head = stream.read(4 + 4 * ndim)
    return _parse_header(head, path, ndim=ndim, what=what)[0]


def check_image_shape(path: str | Path, shape: tuple[int, ...]) -> None:
    """Images must be 28x28: the model reads each as 28 rows of 28 pixels."""
    if tuple(shape) != IMAGE_SHAPE:
        raise IdxFormatError(
            path,
            f"images are {'x'.join(map(str, shape))}, expected {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}",
            "the published model reads 28 rows of 28 pixels: resize or pad the images to 28x28.",
        )


def _check_payload_size(path: str | Path, dims: tuple[int, ...], actual: int, what: str) -> None:
    expected = int(np.prod(dims, dtype=np.int64))
    if actual < expected:
        raise IdxFormatError(
            path, f"truncated: the header declares {dims[0]} {what} ({expected} bytes) but only {actual} bytes follow"
        )
    if actual > expected:
        raise IdxFormatError(path, f"{actual - expected} trailing bytes after the {dims[0]} {what} the header declares")


def read_images(path: str | Path, image_shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Read an IDX images file into a uint8 array of shape (N, rows, cols), checking rows x cols."""
    images = parse_idx(read_payload(path), path, ndim=3, what="images")
    if images.shape[1:] != image_shape:
        rows, cols = images.shape[1:]
        raise IdxFormatError(path, f"images are {rows}x{cols}, expected {image_shape[0]}x{image_shape[1]}")
    return images


def read_labels(path: str | Path) -> np.ndarray:
    """Read an IDX labels file into a uint8 array of shape (N,)."""
    return parse_idx(read_payload(path), path, ndim=1, what="labels")


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array (N x 28 x 28 images, or N labels) as an IDX file, gzip-compressed when
    the name ends in .gz (with no timestamp, so the same records give the same SHA-256)."""
    data = np.ascontiguousarray(array)
    if data.dtype != np.uint8 or data.ndim not in (1, 3):
        raise ValueError(f"IDX files here hold uint8 labels (N) or images (N x rows x cols), got {data.dtype} {data.shape}")
    payload = bytes([0, 0, UBYTE, data.ndim]) + b"".join(d.to_bytes(4, "big") for d in data.shape) + data.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload, mtime=0) if path.name.endswith(".gz") else payload)
    return path


def load_split(raw_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the images (N x 28 x 28) and labels (N) of ``split`` ("train"/"test") from ``raw_dir``.

    Looks for the .gz names first, then the same names without .gz. Checks that both files hold
    the same number of records; the classes are checked by :func:`class_count`.
    """
    images_path, labels_path = split_paths(raw_dir, split)
    images, labels = read_images(images_path), read_labels(labels_path)
    check_same_count(images_path, len(images), labels_path, len(labels))
    return images, labels


def split_paths(raw_dir: str | Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of ``split`` in ``raw_dir``: the .gz names, else the plain ones."""
    images_name, labels_name = split_file_names(split)
    return _locate(Path(raw_dir), images_name), _locate(Path(raw_dir), labels_name)


def check_same_count(images_path: str | Path, n_images: int, labels_path: str | Path, n_labels: int) -> None:
    if n_images != n_labels:
        raise IdxFormatError(
            images_path,
            f"{n_images} images but {labels_path} has {n_labels} labels",
            "the two files must hold the same records, one label per image: if they came from different "
            "downloads, delete both and rerun to fetch them again; if they are your own, write them again "
            "from the same records.",
        )


def class_count(train_labels: np.ndarray, labels_path: str | Path) -> int:
    """The number of classes, from the training labels: the largest label + 1.

    Labels are class numbers 0..K-1 (as in MNIST); the model gets one output per class, so a
    class number with no training record at all means the labels are not numbered that way.
    """
    labels = np.asarray(train_labels)
    if len(labels) == 0:
        raise IdxFormatError(labels_path, "no labels", "give the training split at least one record per class.")
    n_classes = int(labels.max()) + 1
    absent = sorted(set(range(n_classes)) - {int(c) for c in np.unique(labels)})
    if absent:
        shown = ", ".join(map(str, absent[:10])) + (", ..." if len(absent) > 10 else "")
        raise IdxFormatError(
            labels_path,
            f"the largest label is {n_classes - 1}, but classes {shown} have no training record",
            f"number the classes 0..K-1 without gaps (the model has one output per class, "
            f"here {n_classes}): relabel the records, in the test labels too.",
        )
    if n_classes < 2:
        raise IdxFormatError(labels_path, "every label is 0: one class", "give the training split at least two classes.")
    return n_classes


def check_test_classes(test_labels: np.ndarray, labels_path: str | Path, n_classes: int) -> None:
    """Every test label must be a class the model has an output for (one seen in training)."""
    labels = np.asarray(test_labels)
    if len(labels) and int(labels.max()) >= n_classes:
        raise IdxFormatError(
            labels_path,
            f"test label {int(labels.max())} found, but the training labels have classes 0..{n_classes - 1}",
            "keep in the test split only the classes the training split has, numbered the same way.",
        )


def _locate(raw_dir: Path, gz_name: str) -> Path:
    for candidate in (raw_dir / gz_name, raw_dir / gz_name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{raw_dir / gz_name}: no such file. Fix: run the download step first, "
        "or set dataset.dir to a folder holding the four IDX files."
    )
