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
IMAGE_SHAPE = (28, 28)
N_CLASSES = 10
GZIP_MAGIC = b"\x1f\x8b"
SPLIT_PREFIXES = {"train": "train", "test": "t10k"}  # split name -> file name prefix

_FIX = (
    "Delete it and rerun to download it again; if it came from dataset.dir, "
    "check that folder holds the original, unmodified files."
)


class IdxFormatError(ValueError):
    """A file is not a valid IDX file of the expected kind.

    ``path`` and ``problem`` are kept apart so callers can report the problem alone
    (e.g. per download mirror); ``str()`` gives the full message with the fix.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = _FIX) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}. {fix}")


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
    _check_payload_size(path, dims, len(data) - header_size, what)
    # bytearray -> a writable array that owns its memory
    return np.frombuffer(bytearray(data[header_size:]), dtype=np.uint8).reshape(dims)


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


def load_split(raw_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the images (N x 28 x 28) and labels (N) of ``split`` ("train"/"test") from ``raw_dir``.

    Looks for the .gz names first, then the same names without .gz. Checks that both files hold
    the same number of records and that every label is a class 0..9.
    """
    images_path, labels_path = (_locate(Path(raw_dir), name) for name in split_file_names(split))
    images, labels = read_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise IdxFormatError(
            images_path,
            f"{len(images)} images but {labels_path} has {len(labels)} labels",
            "The two files come from different downloads: delete both and rerun to download them again.",
        )
    if len(labels) and labels.max() >= N_CLASSES:
        raise IdxFormatError(labels_path, f"label {int(labels.max())} found, expected classes 0..{N_CLASSES - 1}")
    return images, labels


def _locate(raw_dir: Path, gz_name: str) -> Path:
    for candidate in (raw_dir / gz_name, raw_dir / gz_name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{raw_dir / gz_name}: no such file. Run the download step first, "
        "or set dataset.dir to a folder holding the four IDX files."
    )
