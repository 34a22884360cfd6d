"""Datasets of your own: IDX files you bring, checked against the configuration before any job.

A ``dataset.name`` that is not built in (``dlscale.datasets.CATALOG``) names a dataset of your
own. Its four files have MNIST's names and format (28x28 ubyte images, ubyte class labels
0..K-1, gzip-compressed); ``dataset.sha256`` gives the SHA-256 of each ``.gz`` file as it is on
disk (what ``sha256sum`` prints), and ``dataset.dir`` the folder holding them (or
``dataset.mirrors`` URLs serving them). The download step copies and checks them like the
built-in ones, so results always come from the files whose checksums the config names.

``python -m dlscale.custom_dataset FOLDER --name NAME`` reads the files through, checks them
and prints that ``dataset:`` block (the way to record the checksums on first use).

Before any job (``dlscale.config``), the record counts are read from the files' IDX headers,
so ``grid.sizes`` and ``training.test_size`` are checked against the real counts, and a file
that is not IDX, or images and labels of different counts, is one clear error.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlscale import paths
from dlscale.datasets import CATALOG, RAW_FILE_NAMES, CatalogFile, Dataset, sha256_of_file
from dlscale.idx import (
    IdxFormatError,
    check_image_shape,
    check_same_count,
    check_test_classes,
    class_count,
    load_split,
    read_dims,
    split_file_names,
)

# Both built-in datasets have MNIST's splits; used only while their files are not on disk yet
# (a download still to come), as their checksums pin these counts.
BUILTIN_RECORDS = {"train": 60000, "test": 10000}
# The name is a folder of resources/ and results/: the schema (workflow/schemas) has the same pattern.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RECORD_COMMAND = "python -m dlscale.custom_dataset <folder> --name {name}"


def is_own(name: str) -> bool:
    return name not in CATALOG


def dataset_catalog(name: str, sha256: Mapping[str, str] | None = None) -> Mapping[str, Dataset]:
    """The catalog the download step uses: the built-in one, plus ``name`` when it is your own
    (its files checked by the ``sha256`` of the config; no built-in mirrors)."""
    if not is_own(name):
        return CATALOG
    if not sha256:
        raise ValueError(f"dataset {name!r} is not built in and has no dataset.sha256. Fix: {_record_fix(name)}")
    files = tuple(CatalogFile(file, sha256=sha256[file].lower()) for file in RAW_FILE_NAMES)
    return {**CATALOG, name: Dataset(name=name, files=files, own=True)}


def _record_fix(name: str) -> str:
    return (
        f"record the checksums of your four IDX files with `{RECORD_COMMAND.format(name=name)}` and add the "
        "dataset block it prints to your config (config/README.md, 'Your own data')."
    )


# --- record counts from the files' headers -------------------------------------------------


def split_records(folder: str | Path) -> dict[str, int]:
    """Records of each split, from the IDX headers of the four files in ``folder`` (a few bytes
    each). Raises :class:`IdxFormatError` for a file that is not IDX, images that are not 28x28
    or images and labels of different counts."""
    records = {}
    for split in ("train", "test"):
        images, labels = (Path(folder) / name for name in split_file_names(split))
        image_dims = read_dims(images, ndim=3, what="images")
        check_image_shape(images, image_dims[1:])
        (n_labels,) = read_dims(labels, ndim=1, what="labels")
        check_same_count(images, image_dims[0], labels, n_labels)
        records[split] = image_dims[0]
    return records


def files_folder(dataset: Mapping[str, Any], raw_dir: str | Path) -> Path | None:
    """Where the dataset's four files are now: the raw folder of an earlier download (what the
    partition step reads), else ``dataset.dir``; None before any download."""
    for folder in (raw_dir, dataset.get("dir")):
        if folder and all((Path(folder) / name).is_file() for name in RAW_FILE_NAMES):
            return Path(folder)
    return None


def dataset_problems(dataset: Mapping[str, Any]) -> tuple[list[str], dict[str, int] | None, str]:
    """(problems, records per split or None when unknown yet, where the counts come from).

    The problems of the ``dataset`` block, each ending with its fix; the counts are read from the
    files when they are on disk (built-in datasets not downloaded yet: their published counts)."""
    name = dataset["name"]
    problems = []
    if not is_own(name) and dataset.get("sha256"):
        problems.append(
            f"dataset.sha256 is set, but {name!r} is built in (its files are checked against built-in "
            f"checksums). Fix: remove dataset.sha256, or give your files a dataset.name of their own "
            f"(e.g. {name}-local)."
        )
    if is_own(name):
        if not dataset.get("sha256"):
            problems.append(
                f"dataset.name {name!r} is not built in ({', '.join(sorted(CATALOG))}), so it names a dataset "
                f"of your own, and dataset.sha256 is not set. Fix: {_record_fix(name)}"
            )
        if not dataset.get("dir") and not dataset.get("mirrors"):
            problems.append(
                f"dataset {name!r} is your own: there is nowhere to fetch it from. Fix: set dataset.dir to the "
                "folder holding its four IDX files (or dataset.mirrors to URLs serving them)."
            )
    folder = files_folder(dataset, paths.raw_dir(name))
    if folder is not None and folder == Path(paths.raw_dir(name)):
        problems.extend(_other_files_problem(dataset, folder))
    if folder is None:
        return problems, (None if is_own(name) else dict(BUILTIN_RECORDS)), "its published count, not downloaded yet"
    try:
        return problems, split_records(folder), f"the files in {folder}"
    except (IdxFormatError, OSError) as exc:
        return [*problems, str(exc)], None, ""


def _other_files_problem(dataset: Mapping[str, Any], raw: Path) -> list[str]:
    """A dataset of your own whose recorded checksums changed while the files of an earlier run are
    still in its raw folder: the new files would be fetched and partitioned, but completed cells are
    never rerun, so new cells would sit beside those of the old files under one name."""
    name, sha256 = dataset["name"], dataset.get("sha256")
    if not (is_own(name) and sha256):
        return []
    differ = [file for file in RAW_FILE_NAMES if sha256_of_file(raw / file) != sha256[file].lower()]
    if not differ:
        return []
    return [
        f"{raw} holds files of an earlier run of {name!r} that dataset.sha256 does not name "
        f"({', '.join(differ)}). Fix: give the new files a dataset.name of their own, so that the results "
        f"of {name!r} all come from one set of files; or, to start {name!r} again, move its results "
        f"(results/*/{name}, results/logs/cells/{name}) away and delete resources/{name}."
    ]


# --- recording the checksums on first use --------------------------------------------------


def config_block(folder: str | Path, name: str) -> str:
    """The ``dataset:`` block of a config for the files in ``folder``, after reading every file
    through as the partition step will (IDX format, counts, classes 0..K-1)."""
    folder = Path(folder).resolve()
    if not is_own(name):
        raise ValueError(f"{name!r} is a built-in dataset. Fix: choose a name of your own (e.g. {name}-local).")
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"{name!r} cannot name a dataset: it becomes a folder of resources/ and results/. Fix: use letters, "
            "digits, '.', '_' and '-', starting with a letter or digit."
        )
    missing = [file for file in RAW_FILE_NAMES if not (folder / file).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}. Fix: put the four gzip-compressed IDX files there under "
            f"these names: {', '.join(RAW_FILE_NAMES)} (gzip -k compresses a plain file)."
        )
    train_images, train_labels = load_split(folder, "train")
    n_classes = class_count(train_labels, folder / split_file_names("train")[1])
    test_images, test_labels = load_split(folder, "test")
    check_test_classes(test_labels, folder / split_file_names("test")[1], n_classes)
    lines = [
        f"# {name}: {len(train_labels)} training and {len(test_labels)} test records, {n_classes} classes, "
        "28x28 images (checked by dlscale.custom_dataset)",
        f"# grid.sizes must be at most {len(train_labels)}, training.test_size at most {len(test_labels)}",
        "dataset:",
        f"  name: {name}",
        f"  dir: {folder}",
        "  sha256:",
        *(f"    {file}: {sha256_of_file(folder / file)}" for file in RAW_FILE_NAMES),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check a folder of IDX files and print the dataset block that records their SHA-256."
    )
    parser.add_argument("folder", help="the folder holding the four IDX .gz files")
    parser.add_argument("--name", required=True, help="the dataset.name to give them (not a built-in one)")
    args = parser.parse_args(argv)
    try:
        block = config_block(args.folder, args.name)
    except (ValueError, OSError) as exc:  # IdxFormatError is a ValueError
        print(f"dlscale.custom_dataset: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
