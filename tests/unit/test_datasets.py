"""Catalog and fetching, against a real HTTP server on 127.0.0.1 (no mocked network)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from dlscale.datasets import (
    CATALOG,
    RAW_FILE_NAMES,
    CatalogFile,
    DownloadError,
    VerificationError,
    fetch_dataset,
    find_problem,
    get_dataset,
    verify_file,
)
from dlscale.idx import load_split
from dlscale_testing import FASHION_MNIST

DEBIAN_FASHION_MNIST = FASHION_MNIST


def require_fashion_mnist() -> None:
    """`make test` installs Debian's Fashion-MNIST: without it, fail and say how to install it."""
    missing = [name for name in RAW_FILE_NAMES if not (DEBIAN_FASHION_MNIST / name).is_file()]
    if missing:
        pytest.fail(f"Fashion-MNIST is not installed ({', '.join(missing)} missing in {DEBIAN_FASHION_MNIST}): "
                    "run `make fashion-mnist` (Debian's dataset-fashion-mnist package; `make test` does it)",
                    pytrace=False)
HEX = set("0123456789abcdef")


def _serve(mirrors, folder: str, source: Path) -> str:
    """Publish ``source``'s files as mirror ``folder``; return its base URL."""
    shutil.copytree(source, mirrors.root / folder)
    return mirrors.url(folder)


def _corrupt_copy(source: Path, dest: Path) -> Path:
    """The same files with one payload byte changed: still valid gzip + IDX, wrong digests."""
    dest.mkdir()
    for name in RAW_FILE_NAMES:
        payload = bytearray(gzip.decompress((source / name).read_bytes()))
        payload[-1] ^= 0x01
        (dest / name).write_bytes(gzip.compress(bytes(payload)))
    return dest


def _fetch(dataset, dest, **kwargs):
    return fetch_dataset(dataset.name, dest, catalog={dataset.name: dataset}, timeout=2, **kwargs)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- catalog ---------------------------------------------------------------------------------


def test_catalog_entries_are_complete():
    assert set(CATALOG) == {"mnist", "fashion-mnist"}
    for dataset in CATALOG.values():
        assert tuple(f.name for f in dataset.files) == RAW_FILE_NAMES
        assert dataset.mirrors and all(
            m.startswith(("http://", "https://")) and m.endswith("/") for m in dataset.mirrors
        )
        for entry in dataset.files:
            for digest in (entry.sha256, entry.content_sha256):
                assert digest is None or (len(digest) == 64 and set(digest) <= HEX)
    assert CATALOG["mnist"].mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert all(f.content_sha256 for f in CATALOG["fashion-mnist"].files)  # Debian re-gzips: content digests


def test_catalog_file_needs_a_digest():
    with pytest.raises(ValueError, match="sha256"):
        CatalogFile("train-images-idx3-ubyte.gz")


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*fashion-mnist, mnist"):
        fetch_dataset("cifar", tmp_path)
    assert get_dataset("mnist").name == "mnist"


# --- verification ------------------------------------------------------------------------------


def test_verify_accepts_either_digest(tmp_path, tiny_dataset, idx_factory):
    dataset, good = tiny_dataset
    by_gz = dataset.files[0]  # train files carry the .gz digest
    by_content = dataset.files[2]  # test files carry the content digest
    assert find_problem(good / by_gz.name, by_gz) is None
    # re-gzipping at another level changes the .gz bytes but not the content
    regzipped = tmp_path / by_content.name
    regzipped.write_bytes(
        gzip.compress(gzip.decompress((good / by_content.name).read_bytes()), compresslevel=1, mtime=7)
    )
    assert regzipped.read_bytes() != (good / by_content.name).read_bytes()
    verify_file(regzipped, by_content)
    # ...whereas an entry that only knows the .gz digest rejects the re-gzipped copy
    assert "checksum mismatch" in find_problem(regzipped, CatalogFile(by_content.name, sha256="0" * 64))


def test_verify_reads_idx_after_checksum(tmp_path, idx_factory):
    """A file whose digest matches but which is not a valid IDX file of its kind is still refused."""
    _, labels = idx_factory.arrays(10)
    swapped = idx_factory.write(tmp_path / "train-images-idx3-ubyte.gz", idx_factory.idx_bytes(labels))
    entry = CatalogFile(swapped.name, content_sha256=hashlib.sha256(idx_factory.idx_bytes(labels)).hexdigest())
    with pytest.raises(VerificationError, match=r"not a valid IDX file: magic 2049"):
        verify_file(swapped, entry)


def test_verify_reports_corrupt_gzip(tmp_path, tiny_dataset):
    dataset, good = tiny_dataset
    entry = dataset.files[2]
    cut = tmp_path / entry.name
    cut.write_bytes((good / entry.name).read_bytes()[:-20])
    assert "gzip stream is truncated" in find_problem(cut, entry)


# --- offline folder ----------------------------------------------------------------------------


def test_offline_copy_without_network(tmp_path, tiny_dataset, refused_url):
    dataset, good = tiny_dataset
    dest = tmp_path / "raw"
    paths = _fetch(dataset, dest, offline_dir=good, mirrors=[refused_url])
    assert [p.name for p in paths] == list(RAW_FILE_NAMES)
    for path in paths:
        assert path.read_bytes() == (good / path.name).read_bytes()
    assert len(load_split(dest, "train")[0]) == 60
    assert _leftovers(dest) == []


def test_offline_missing_file_names_path_and_fix(tmp_path, tiny_dataset):
    dataset, good = tiny_dataset
    (good / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as caught:
        _fetch(dataset, tmp_path / "raw", offline_dir=good)
    message = str(caught.value)
    assert str(good / "t10k-labels-idx1-ubyte.gz") in message
    assert "dataset.dir" in message and "unset dataset.dir" in message


def test_offline_bad_file_is_refused_and_not_installed(tmp_path, tiny_dataset):
    dataset, good = tiny_dataset
    bad = _corrupt_copy(good, tmp_path / "bad")
    dest = tmp_path / "raw"
    with pytest.raises(VerificationError, match=r"bad/train-images-idx3-ubyte\.gz: checksum mismatch.*unmodified"):
        _fetch(dataset, dest, offline_dir=bad)
    assert not (dest / "train-images-idx3-ubyte.gz").exists()
    assert _leftovers(dest) == []


# --- mirrors -----------------------------------------------------------------------------------


def test_falls_back_to_second_mirror_when_first_serves_bad_files(tmp_path, tiny_dataset, local_mirrors, caplog):
    dataset, good = tiny_dataset
    bad_url = _serve(local_mirrors, "bad", _corrupt_copy(good, tmp_path / "bad"))
    good_url = _serve(local_mirrors, "good", good)
    dest = tmp_path / "raw"
    with caplog.at_level("WARNING", logger="dlscale.datasets"):
        paths = _fetch(dataset, dest, mirrors=[bad_url, good_url])
    for path in paths:
        assert path.read_bytes() == (good / path.name).read_bytes()
    assert sum("checksum mismatch" in r.getMessage() and bad_url in r.getMessage() for r in caplog.records) == 4
    assert _leftovers(dest) == []


class SilentMirror:
    """A server on 127.0.0.1 that accepts every connection, reads nothing, answers nothing and
    counts the connections it got: each client that uses it can only give up by its timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/data/"
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)  # held open, never answered

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.thread.join(10)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_mirror():
    """Requested before ``refused_url``, so the refused port cannot be the silent one's."""
    mirror = SilentMirror()
    try:
        yield mirror
    finally:
        mirror.close()


def test_network_failures_fall_through_to_a_good_mirror(
    tmp_path, tiny_dataset, local_mirrors, silent_mirror, refused_url, caplog
):
    """Refused, 404 and a server that never answers: each file tries each mirror once, in order,
    the silent one ending on its timeout (no retry, no wait for ever), and the good one serves it."""
    dataset, good = tiny_dataset
    good_url = _serve(local_mirrors, "good", good)
    missing_url = local_mirrors.url("nothing-here")  # HTTP 404
    silent = silent_mirror
    mirrors = [refused_url, missing_url, silent.url, good_url]
    with caplog.at_level("INFO", logger="dlscale.datasets"):
        fetch_dataset(dataset.name, tmp_path / "raw", mirrors=mirrors, catalog={dataset.name: dataset}, timeout=0.3)
    assert load_split(tmp_path / "raw", "test")[1].shape == (20,)
    messages = [record.getMessage() for record in caplog.records]
    for entry in dataset.files:
        tried = [m.split()[-1] for m in messages if m.startswith("downloading ") and m.endswith("/" + entry.name)]
        assert tried == [base + entry.name for base in mirrors], tried
    # the silent mirror got one connection per file, and each ended by the timeout
    assert len(silent.accepted) == len(dataset.files)
    timed_out = [m for m in messages if m.startswith(f"mirror failed for {silent.url}") and "timed out" in m]
    assert len(timed_out) == len(dataset.files), messages


def test_every_mirror_bad_gives_one_clear_error(tmp_path, tiny_dataset, local_mirrors, refused_url):
    dataset, good = tiny_dataset
    bad_url = _serve(local_mirrors, "bad", _corrupt_copy(good, tmp_path / "bad"))
    short_url = _serve(local_mirrors, "short", good)  # announces more bytes than it sends
    dest = tmp_path / "raw"
    with pytest.raises(DownloadError) as caught:
        _fetch(dataset, dest, mirrors=[bad_url, refused_url, short_url])
    message = str(caught.value)
    assert "train-images-idx3-ubyte.gz" in message and "'tiny'" in message
    assert f"{bad_url}train-images-idx3-ubyte.gz: checksum mismatch" in message
    assert f"{refused_url}train-images-idx3-ubyte.gz: URLError" in message
    assert f"{short_url}train-images-idx3-ubyte.gz: IncompleteDownloadError: connection closed after" in message
    assert "check the network" in message and "dataset.dir" in message
    # atomic: nothing under the final name, no temp file left behind
    assert list(dest.iterdir()) == []


def test_verified_file_is_kept_and_bad_one_replaced(tmp_path, tiny_dataset, local_mirrors):
    dataset, good = tiny_dataset
    good_url = _serve(local_mirrors, "good", good)
    dest = tmp_path / "raw"
    _fetch(dataset, dest, mirrors=[good_url])
    kept, damaged = dest / RAW_FILE_NAMES[0], dest / RAW_FILE_NAMES[1]
    os.utime(kept, (1_000_000, 1_000_000))  # a re-download would reset the mtime
    damaged.write_bytes(b"garbage")
    _fetch(dataset, dest, mirrors=[good_url])
    assert kept.stat().st_mtime == 1_000_000
    assert damaged.read_bytes() == (good / damaged.name).read_bytes()


def test_kept_files_need_no_network(tmp_path, tiny_dataset, refused_url):
    dataset, good = tiny_dataset
    dest = shutil.copytree(good, tmp_path / "raw")
    paths = _fetch(dataset, dest, mirrors=[refused_url])
    assert all(p.exists() for p in paths)


def test_download_script_with_real_fashion_mnist(tmp_path, run_script):
    """download.py maps params.dataset / offline_dir / mirrors and writes the four outputs.

    Debian's re-gzipped files pass on their content digests; MNIST's .gz digests would refuse them.
    """
    require_fashion_mnist()
    raw = tmp_path / "resources" / "fashion-mnist" / "raw"
    outputs = [raw / name for name in RAW_FILE_NAMES]
    done = run_script(
        "download.py",
        input=[],
        output=outputs,
        params={"dataset": "fashion-mnist", "offline_dir": str(DEBIAN_FASHION_MNIST), "mirrors": None},
        log=[tmp_path / "download.log"],
    )
    assert done.returncode == 0, done.stderr
    assert all(path.is_file() for path in outputs)
    assert "copied train-images-idx3-ubyte.gz" in (tmp_path / "download.log").read_text()
    labels = np.frombuffer(gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:], dtype=np.uint8)
    assert labels.shape == (10000,)
    mnist_entry = CATALOG["mnist"].files[3]
    assert "checksum mismatch" in find_problem(raw / mnist_entry.name, mnist_entry)
