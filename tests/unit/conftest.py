"""Shared fixtures of the data-stage tests: tiny synthetic IDX files and a local HTTP mirror.

Helpers are reached through fixtures (not imported as a module) so they work whatever the
test-import mode.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from dlscale.datasets import CatalogFile, Dataset
from dlscale.idx import split_file_names


class IdxFactory:
    """Makes small, valid-or-deliberately-broken IDX files."""

    @staticmethod
    def arrays(n: int, seed: int = 0, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Random 28x28 images and labels in which every class appears (n >= n_classes)."""
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)]).astype(np.uint8)
        return images, rng.permutation(labels)

    @staticmethod
    def idx_bytes(array: np.ndarray, dtype_code: int = 0x08, dims: tuple[int, ...] | None = None) -> bytes:
        """IDX encoding of a uint8 array; ``dims`` overrides the declared dimensions."""
        dims = array.shape if dims is None else dims
        header = bytes([0, 0, dtype_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
        return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()

    @staticmethod
    def write(path: Path, payload: bytes, gz: bool = True) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
        return path

    def write_split(
        self, raw_dir: Path, split: str, n: int, seed: int = 0, n_classes: int = 10
    ) -> tuple[np.ndarray, np.ndarray]:
        """Write the two .gz files of ``split`` into ``raw_dir``; return the arrays written."""
        images, labels = self.arrays(n, seed, n_classes)
        images_name, labels_name = split_file_names(split)
        self.write(raw_dir / images_name, self.idx_bytes(images))
        self.write(raw_dir / labels_name, self.idx_bytes(labels))
        return images, labels

    def write_raw_dir(self, raw_dir: Path, n_train: int = 200, n_test: int = 50, n_classes: int = 10) -> Path:
        self.write_split(raw_dir, "train", n_train, seed=1, n_classes=n_classes)
        self.write_split(raw_dir, "test", n_test, seed=2, n_classes=n_classes)
        return raw_dir


@pytest.fixture
def idx_factory() -> IdxFactory:
    return IdxFactory()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_dataset(tmp_path: Path, idx_factory: IdxFactory) -> tuple[Dataset, Path]:
    """A catalog entry for four small synthetic files, and the folder holding the good copies.

    Train files are checked by the .gz digest, test files by the content digest, so both
    kinds of digest are exercised.
    """
    good = idx_factory.write_raw_dir(tmp_path / "good", n_train=60, n_test=20)
    files = []
    for name in (*split_file_names("train"), *split_file_names("test")):
        data = (good / name).read_bytes()
        if name.startswith("train"):
            files.append(CatalogFile(name, sha256=sha256_hex(data)))
        else:
            files.append(CatalogFile(name, content_sha256=sha256_hex(gzip.decompress(data))))
    return Dataset("tiny", tuple(files), mirrors=()), good


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the root folder; files under /short/ get a Content-Length beyond what is sent."""

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        if not self.path.startswith("/short/"):
            return super().do_GET()
        body = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + 1000))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True


class LocalMirrors:
    """A real HTTP server on 127.0.0.1 serving ``root``; each subfolder acts as one mirror."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = partial(_QuietHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def url(self, folder: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{folder}/"

    def __enter__(self) -> LocalMirrors:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def local_mirrors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalMirrors]:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a proxy in the environment must not intercept
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    with LocalMirrors(root) as mirrors:
        yield mirrors


@pytest.fixture
def refused_url() -> str:
    """A URL on a local port nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/data/"


SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "workflow" / "scripts"

# Runs a workflow script as Snakemake does: in a fresh Python, with a global `snakemake` built
# from Snakemake's own containers (so attribute access and missing params behave as in a rule).
_SCRIPT_RUNNER = """
import json, pickle, runpy, sys
from snakemake.iocontainers import InputFiles, Log, OutputFiles, Params, Snakemake, Wildcards
spec = json.loads(sys.argv[2])
smk = Snakemake(InputFiles(toclone=spec["input"]), OutputFiles(toclone=spec["output"]),
                Params(fromdict=spec["params"]), Wildcards(), 1, {}, Log(toclone=spec["log"]),
                {}, "test_rule", None)
smk = pickle.loads(pickle.dumps(smk))  # Snakemake ships the object pickled
runpy.run_path(sys.argv[1], init_globals={"snakemake": smk}, run_name="__main__")
"""


@pytest.fixture
def run_script():
    """run_script(name, input=[...], output=[...], params={...}, log=[...]) -> CompletedProcess."""
    pytest.importorskip("snakemake", reason="snakemake is not installed in this environment")
    src = str(SCRIPTS_DIR.parents[1] / "src")

    def run(name: str, *, input: list, output: list, params: dict, log: list) -> subprocess.CompletedProcess:
        spec = {
            "input": [str(p) for p in input],
            "output": [str(p) for p in output],
            "params": params,
            "log": [str(p) for p in log],
        }
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        return subprocess.run(
            [sys.executable, "-c", _SCRIPT_RUNNER, str(SCRIPTS_DIR / name), json.dumps(spec)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run
