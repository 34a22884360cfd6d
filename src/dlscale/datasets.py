"""Dataset catalog and verified fetching of the raw IDX files.

Each catalog file carries one or two digests:

- ``sha256``: SHA-256 of the ``.gz`` file exactly as its publisher serves it;
- ``content_sha256``: SHA-256 of the decompressed IDX payload. Redistributors (Debian's
  fashion-mnist package, for one) re-gzip the files, which changes the ``.gz`` bytes but not the
  content, so this digest accepts any faithful copy however it was compressed.

A file passes when ANY digest given matches, and is then read as IDX (header, dimensions,
payload size) so that a file with a right digest but a wrong catalog entry cannot slip through.

Files are written to a temp file in the destination folder, verified, then renamed into place
(``os.replace``), so the destination never holds a partial or unverified file under its final name.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dlscale import __version__
from dlscale.idx import IdxFormatError, open_payload, read_images, read_labels, split_file_names

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_USER_AGENT = f"dlscale/{__version__} (Python urllib)"  # some mirrors refuse urllib's default agent
RAW_FILE_NAMES = (*split_file_names("train"), *split_file_names("test"))


@dataclass(frozen=True)
class CatalogFile:
    """One raw file of a dataset and the digests that accept it (see the module docstring)."""

    name: str
    sha256: str | None = None
    content_sha256: str | None = None

    def __post_init__(self) -> None:
        if not (self.sha256 or self.content_sha256):
            raise ValueError(f"catalog file {self.name}: give sha256 and/or content_sha256")

    @property
    def kind(self) -> str:
        """ "images" or "labels", from the file name."""
        return "images" if "-images-" in self.name else "labels"


@dataclass(frozen=True)
class Dataset:
    """A dataset: its four raw files and the mirror base URLs to try, in order.

    ``own``: a dataset of the user's own (``dlscale.custom_dataset``), checked by the SHA-256 of
    their config rather than a published one; only the wording of the fixes differs."""

    name: str
    files: tuple[CatalogFile, ...]
    mirrors: tuple[str, ...] = field(default=())
    own: bool = False


class DownloadError(RuntimeError):
    """Every source of a file failed; the message lists each failure and the fix."""


class VerificationError(ValueError):
    """A file failed its checksum or IDX check."""


class IncompleteDownloadError(OSError):
    """The server closed the connection before sending the Content-Length it announced."""


CATALOG: dict[str, Dataset] = {
    "mnist": Dataset(
        name="mnist",
        files=(
            CatalogFile(
                "train-images-idx3-ubyte.gz", sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
            ),
            CatalogFile(
                "train-labels-idx1-ubyte.gz", sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
            ),
            CatalogFile(
                "t10k-images-idx3-ubyte.gz", sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
            ),
            CatalogFile(
                "t10k-labels-idx1-ubyte.gz", sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            ),
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    # Content digests, computed from Debian's re-gzipped copies (their .gz bytes differ from upstream's).
    "fashion-mnist": Dataset(
        name="fashion-mnist",
        files=(
            CatalogFile(
                "train-images-idx3-ubyte.gz",
                content_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            CatalogFile(
                "train-labels-idx1-ubyte.gz",
                content_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            CatalogFile(
                "t10k-images-idx3-ubyte.gz",
                content_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            CatalogFile(
                "t10k-labels-idx1-ubyte.gz",
                content_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
}


def get_dataset(name: str, catalog: Mapping[str, Dataset] = CATALOG) -> Dataset:
    """The catalog entry of ``name``; an unknown name is an error listing the known ones."""
    try:
        return catalog[name]
    except KeyError:
        known = ", ".join(sorted(catalog))
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {known}. Set the dataset name to one of them."
        ) from None


# --- digests and verification ------------------------------------------------------------


def sha256_of_file(path: str | Path) -> str:
    """SHA-256 of the file's bytes as stored (for a .gz: of the compressed bytes)."""
    with Path(path).open("rb") as stream:
        return _sha256_of_stream(stream)


def content_sha256_of_file(path: str | Path) -> str:
    """SHA-256 of the decompressed IDX payload (of the bytes as stored for a plain file)."""
    with open_payload(path) as stream:
        return _sha256_of_stream(stream)


def _sha256_of_stream(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def find_problem(path: str | Path, entry: CatalogFile) -> str | None:
    """What is wrong with ``path`` as a copy of ``entry``, in a few words; None when it is good.

    Checks the digests first (cheap for .gz digests), then reads the whole file as IDX.
    """
    try:
        mismatch = _digest_mismatch(path, entry)
        if mismatch:
            return mismatch
        _read_idx(path, entry.kind)
    except IdxFormatError as exc:
        return f"not a valid IDX file: {exc.problem}"
    return None


def verify_file(path: str | Path, entry: CatalogFile) -> None:
    """Raise :class:`VerificationError` unless ``path`` passes ``entry``'s digests and IDX check."""
    problem = find_problem(path, entry)
    if problem:
        raise VerificationError(f"{path}: {problem}. Fix: delete it and rerun to fetch it again.")


def _digest_mismatch(path: str | Path, entry: CatalogFile) -> str | None:
    found = []
    if entry.sha256:
        actual = sha256_of_file(path)
        if actual == entry.sha256:
            return None
        found.append(f"sha256 {actual[:12]}…, expected {entry.sha256[:12]}…")
    if entry.content_sha256:
        actual = content_sha256_of_file(path)
        if actual == entry.content_sha256:
            return None
        found.append(f"content sha256 {actual[:12]}…, expected {entry.content_sha256[:12]}…")
    return f"checksum mismatch ({'; '.join(found)})"


def _read_idx(path: str | Path, kind: str) -> None:
    (read_images if kind == "images" else read_labels)(path)


# --- fetching ----------------------------------------------------------------------------


def fetch_dataset(
    name: str,
    dest_dir: str | Path,
    offline_dir: str | Path | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    catalog: Mapping[str, Dataset] = CATALOG,
) -> list[Path]:
    """Put the verified raw files of dataset ``name`` into ``dest_dir``; return their paths.

    - A file already in ``dest_dir`` that verifies is kept as is (no network).
    - With ``offline_dir`` the files are copied from there and verified; the network is not used.
    - Otherwise each mirror (``mirrors``, default the catalog's) is tried in turn; a network error
      or a file failing verification moves on to the next one. ``timeout`` (seconds) bounds each
      connect and each read, not the whole download.

    Raises ValueError (unknown dataset), FileNotFoundError (file missing from ``offline_dir``),
    VerificationError (bad file in ``offline_dir``) or DownloadError (every mirror failed).
    """
    dataset = get_dataset(name, catalog)
    bases = _mirror_list(dataset, mirrors)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in dataset.files:
        target = dest / entry.name
        if _is_kept(target, entry):
            log.info("keeping %s: already present and verified", target)
        elif offline_dir is not None:
            _copy_from_offline_dir(dataset, entry, Path(offline_dir), target)
        else:
            _download_from_mirrors(dataset, entry, bases, target, timeout)
        paths.append(target)
    return paths


def _mirror_list(dataset: Dataset, mirrors: Sequence[str] | None) -> tuple[str, ...]:
    if mirrors is None:
        return dataset.mirrors
    if isinstance(mirrors, str):  # a lone URL from a config file, not a sequence of characters
        return (mirrors,)
    return tuple(mirrors)


def _is_kept(target: Path, entry: CatalogFile) -> bool:
    if not target.exists():
        return False
    problem = find_problem(target, entry)
    if problem:
        log.warning("replacing %s: %s", target, problem)
    return problem is None


def _copy_from_offline_dir(dataset: Dataset, entry: CatalogFile, offline_dir: Path, target: Path) -> None:
    source = offline_dir / entry.name
    if not source.is_file():
        raise FileNotFoundError(
            f"{source}: no such file. dataset.dir ({offline_dir}) must hold the {dataset.name} files "
            f"{', '.join(f.name for f in dataset.files)}. Copy them there, or unset dataset.dir to download them."
        )

    def copy(out: BinaryIO) -> None:
        with source.open("rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)

    problem = _install_if_valid(entry, target, copy)
    if problem and dataset.own:
        raise VerificationError(
            f"{source}: {problem}: it is not the file whose SHA-256 dataset.sha256 gives. Fix: put that file "
            "back; if the files changed on purpose, record their checksums again (python -m "
            "dlscale.custom_dataset) under a new dataset.name, so the results of the old files stay apart."
        )
    if problem:
        raise VerificationError(
            f"{source}: {problem}. It is not the original {dataset.name} file: replace it with an "
            "unmodified copy, or unset dataset.dir to download it."
        )
    log.info("copied %s from %s (verified)", entry.name, offline_dir)


def _download_from_mirrors(
    dataset: Dataset, entry: CatalogFile, bases: Sequence[str], target: Path, timeout: float
) -> None:
    failures = []
    for base in bases:
        url = base.rstrip("/") + "/" + entry.name
        log.info("downloading %s", url)
        try:
            problem = _install_if_valid(entry, target, lambda out: _download(url, out, timeout))
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: malformed URL
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            log.info("downloaded %s (verified)", url)
            return
        log.warning("mirror failed for %s: %s", url, problem)
        failures.append(f"  - {url}: {problem}")
    tried = "\n".join(failures) or "  (no mirrors configured)"
    raise DownloadError(
        f"could not fetch {entry.name} of dataset {dataset.name!r} into {target.parent}; every mirror failed:\n"
        f"{tried}\n"
        "Fix: check the network connection (and any proxy), or download the four files by hand "
        "and set dataset.dir to the folder holding them."
    )


def _download(url: str, out: BinaryIO, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        declared = response.headers.get("Content-Length")
        received = 0
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            received += len(chunk)
    # A connection closed early can look like a clean end of stream; the length tells them apart.
    if declared is not None and received != int(declared):
        raise IncompleteDownloadError(f"connection closed after {received} of {declared} bytes")


def _install_if_valid(entry: CatalogFile, target: Path, fill: Callable[[BinaryIO], None]) -> str | None:
    """Write via ``fill`` into a temp file next to ``target``; rename it into place if it verifies.

    Returns the problem found (target untouched) or None (target replaced). Whatever happens,
    including an exception from ``fill``, no temp file is left behind.
    """
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        problem = find_problem(tmp, entry)
        if problem is None:
            tmp.chmod(0o644)  # mkstemp makes 0600; the data is public
            os.replace(tmp, target)
        return problem
    finally:
        tmp.unlink(missing_ok=True)
