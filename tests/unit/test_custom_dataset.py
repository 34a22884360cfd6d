"""A dataset of your own: checksums recorded by the user, record counts and classes read from the
files, and one clear error (ending with its fix) for every kind of bad input, before any job."""

from __future__ import annotations

import copy
import gzip
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from dlscale.config import config_problems
from dlscale.custom_dataset import NAME_PATTERN, config_block, dataset_catalog, dataset_problems, main
from dlscale.datasets import RAW_FILE_NAMES, VerificationError, fetch_dataset, sha256_of_file
from dlscale_testing import REPO

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.fixture
def own_files(tmp_path, idx_factory, monkeypatch) -> Path:
    """Three classes, 60 training and 12 test records, in a folder of the user's; cwd is a fresh
    working directory (no resources/ yet)."""
    monkeypatch.chdir(tmp_path)
    return idx_factory.write_raw_dir(tmp_path / "mine", n_train=60, n_test=12, n_classes=3)


def own_config(folder: Path, name: str = "three", **training) -> dict:
    block = yaml.safe_load(config_block(folder, name))
    config = copy.deepcopy(BASE)
    config["dataset"] = block["dataset"]
    config["grid"] = {"sizes": [20, 60], "cores": [1, 2]}
    config["training"] = {**config["training"], **training}
    return config


def test_the_recorded_block_is_a_valid_config_with_the_users_checksums(own_files, capsys):
    assert main([str(own_files), "--name", "three"]) == 0
    printed = capsys.readouterr().out
    assert "# three: 60 training and 12 test records, 3 classes, 28x28 images" in printed
    block = yaml.safe_load(printed)["dataset"]
    assert block["dir"] == str(own_files.resolve())
    assert block["sha256"] == {name: sha256_of_file(own_files / name) for name in RAW_FILE_NAMES}
    config = own_config(own_files, test_size=12)
    jsonschema.validate(config, SCHEMA)
    assert config_problems(config) == []


def test_the_download_step_copies_and_checks_the_files_by_those_checksums(own_files, tmp_path, idx_factory):
    sha256 = own_config(own_files)["dataset"]["sha256"]
    fetched = fetch_dataset("three", tmp_path / "raw", offline_dir=own_files, catalog=dataset_catalog("three", sha256))
    assert [p.read_bytes() for p in fetched] == [(own_files / n).read_bytes() for n in RAW_FILE_NAMES]
    idx_factory.write_split(own_files, "test", 12, seed=9, n_classes=3)  # the files changed since
    with pytest.raises(VerificationError, match=r"checksum mismatch.*it is not the file whose SHA-256 dataset.sha256 "
                                                r"gives\. Fix: put that file back.*under a new dataset.name"):
        fetch_dataset("three", tmp_path / "raw2", offline_dir=own_files, catalog=dataset_catalog("three", sha256))
    assert not (tmp_path / "raw2" / "t10k-images-idx3-ubyte.gz").exists()  # nothing under its name


def test_once_copied_the_counts_come_from_the_raw_folder(own_files, tmp_path):
    sha256 = own_config(own_files)["dataset"]["sha256"]
    fetch_dataset("three", tmp_path / "resources/three/raw", offline_dir=own_files,
                  catalog=dataset_catalog("three", sha256))
    problems, records, counted_in = dataset_problems({"name": "three", "sha256": sha256, "mirrors": ["file:///x"]})
    assert problems == [] and records == {"train": 60, "test": 12} and counted_in == "the files in resources/three/raw"


def test_checksums_changed_under_the_same_name_are_refused_while_the_old_files_are_copied(
    own_files, tmp_path, idx_factory
):
    old = own_config(own_files)["dataset"]
    fetch_dataset("three", tmp_path / "resources/three/raw", offline_dir=own_files,
                  catalog=dataset_catalog("three", old["sha256"]))
    idx_factory.write_split(own_files, "test", 12, seed=9, n_classes=3)  # new files, recorded again
    new = own_config(own_files)["dataset"]
    problems, _, _ = dataset_problems(new)
    assert problems == [
        "resources/three/raw holds files of an earlier run of 'three' that dataset.sha256 does not name "
        "(t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz). Fix: give the new files a dataset.name of "
        "their own, so that the results of 'three' all come from one set of files; or, to start 'three' "
        "again, move its results (results/*/three, results/logs/cells/three) away and delete resources/three."
    ]
    assert dataset_problems(old)[0] == []


def test_own_files_can_come_from_mirrors_of_the_users(own_files, tmp_path):
    sha256 = own_config(own_files)["dataset"]["sha256"]
    fetched = fetch_dataset("three", tmp_path / "raw", mirrors=[own_files.as_uri() + "/"],
                            catalog=dataset_catalog("three", sha256))
    assert [p.read_bytes() for p in fetched] == [(own_files / n).read_bytes() for n in RAW_FILE_NAMES]
    assert dataset_problems({"name": "three", "sha256": sha256, "mirrors": [own_files.as_uri()]})[0] == []


def test_sizes_and_test_size_are_checked_against_the_counts_in_the_files(own_files):
    config = own_config(own_files, test_size=13)
    config["grid"]["sizes"] = [20, 61]
    problems = config_problems(config)
    assert (f"grid.sizes [61] exceed the 60 training records of three (the files in {own_files.resolve()}). "
            "Fix: use sizes <= 60") in problems
    assert (f"training.test_size 13 exceeds the 12 test records of three (the files in {own_files.resolve()}). "
            "Fix: use <= 12 or null") in problems


def test_a_name_of_your_own_needs_checksums_and_a_source(own_files):
    problems, records, _ = dataset_problems({"name": "kmnist"})
    assert problems == [
        "dataset.name 'kmnist' is not built in (fashion-mnist, mnist), so it names a dataset of your own, and "
        "dataset.sha256 is not set. Fix: record the checksums of your four IDX files with `python -m "
        "dlscale.custom_dataset <folder> --name kmnist` and add the dataset block it prints to your config "
        "(config/README.md, 'Your own data').",
        "dataset 'kmnist' is your own: there is nowhere to fetch it from. Fix: set dataset.dir to the folder "
        "holding its four IDX files (or dataset.mirrors to URLs serving them).",
    ]
    assert records is None
    with pytest.raises(ValueError, match="has no dataset.sha256. Fix: record"):
        dataset_catalog("kmnist")


def test_checksums_for_a_built_in_dataset_are_refused(own_files):
    sha256 = own_config(own_files)["dataset"]["sha256"]
    problems, records, _ = dataset_problems({"name": "mnist", "sha256": sha256})
    assert problems == ["dataset.sha256 is set, but 'mnist' is built in (its files are checked against built-in "
                        "checksums). Fix: remove dataset.sha256, or give your files a dataset.name of their own "
                        "(e.g. mnist-local)."]
    assert records == {"train": 60000, "test": 10000}  # not downloaded yet: the published counts


def damage(folder: Path, idx_factory, name: str) -> None:
    images, labels = idx_factory.arrays(12, n_classes=3)
    if name == "not idx":
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"label,image\n1,0 0 0\n"))
    elif name == "counts differ":
        idx_factory.write(folder / "t10k-labels-idx1-ubyte.gz", idx_factory.idx_bytes(labels[:11]))
    elif name == "32x32":
        idx_factory.write(folder / "t10k-images-idx3-ubyte.gz", idx_factory.idx_bytes(np.zeros((12, 32, 32))))


@pytest.mark.parametrize("name,message", [
    ("not idx", r"mine/train-labels-idx1-ubyte\.gz: not an IDX file: it starts with b'label,im'.*\. Fix: "),
    ("counts differ", r"mine/t10k-images-idx3-ubyte\.gz: 12 images but .*mine/t10k-labels-idx1-ubyte\.gz has 11 "
                      r"labels\. Fix: the two files must hold the same records"),
    ("32x32", r"images are 32x32, expected 28x28\. Fix: the published model reads 28 rows of 28 pixels"),
])
def test_bad_files_are_one_clear_error_before_any_job(own_files, idx_factory, name, message):
    config = own_config(own_files)
    damage(own_files, idx_factory, name)
    problems = config_problems(config)
    assert len(problems) == 1 and re.search(message, problems[0]), problems


@pytest.mark.parametrize("name,message", [
    ("not idx", r"not an IDX file"),
    ("counts differ", r"12 images but .* has 11 labels"),
])
def test_recording_refuses_bad_files(own_files, idx_factory, capsys, name, message):
    damage(own_files, idx_factory, name)
    assert main([str(own_files), "--name", "three"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and re.search(message, out.err) and "Fix: " in out.err


def test_recording_refuses_gaps_in_the_classes_and_names_that_are_not_folders(own_files, idx_factory, capsys):
    assert main([str(own_files), "--name", "../x"]) == 1
    assert "cannot name a dataset" in capsys.readouterr().err
    images, _ = idx_factory.arrays(60)
    idx_factory.write(own_files / "train-labels-idx1-ubyte.gz", idx_factory.idx_bytes(np.repeat([0, 2], 30)))
    assert main([str(own_files), "--name", "three"]) == 1
    assert "classes 1 have no training record. Fix: number the classes 0..K-1" in capsys.readouterr().err


def test_the_schema_and_the_module_agree_on_names():
    assert SCHEMA["properties"]["dataset"]["properties"]["name"]["pattern"] == NAME_PATTERN.pattern
    assert sorted(SCHEMA["properties"]["dataset"]["properties"]["sha256"]["required"]) == sorted(RAW_FILE_NAMES)
