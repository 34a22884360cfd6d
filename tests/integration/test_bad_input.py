"""Bad input gets one clear error, through the real `snakemake` command a user types.

The unit tests (tests/unit/test_{config,idx,datasets,metrics,aggregate}.py) check each check; these check
what reaches the user: the message says what is wrong and how to fix it, and configuration errors
stop the run before any job starts (nothing is made in the working directory).
"""

from __future__ import annotations

import gzip
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from dlscale_testing import DRIVER_BIN, FASHION_MNIST, REPO

pytestmark = pytest.mark.integration

DATASET = "fashion-mnist"
IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
FIX = "Fix: correct these keys in the file given with --configfile (or --config); config/README.md"


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    command = [str(DRIVER_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--workflow-profile", str(REPO / "workflow" / "profiles" / "default"),
               "--configfile", str(workdir / "bad.yaml"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def text_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def offline(folder: Path, broken: dict[str, bytes] = None, missing: str = None) -> Path:
    """A dataset.dir: links to the real Fashion-MNIST files, some replaced or left out."""
    folder.mkdir(parents=True)
    for name in IDX_FILES:
        if name == missing:
            continue
        if broken and name in broken:
            (folder / name).write_bytes(broken[name])
        else:
            (folder / name).symlink_to(FASHION_MNIST / name)
    return folder


def idx(magic: int, dims: list[int], payload: bytes) -> bytes:
    return gzip.compress(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload)


# --- configuration: one message, before any job --------------------------------------------------
CONFIGS = {
    "unknown dataset": ({"dataset": {"name": "cifar10"}},
                        ["dataset.name 'cifar10' is not built in (fashion-mnist, mnist), so it names a dataset of "
                         "your own, and dataset.sha256 is not set. Fix: record the checksums",
                         "dataset 'cifar10' is your own: there is nowhere to fetch it from. Fix: set dataset.dir"]),
    "wrong type": ({"training": {"epochs": "two"}}, ["training.epochs: 'two' is not of type 'integer'", FIX]),
    "out of range": ({"grid": {"sizes": [1000], "cores": [0, 1]}},
                     ["grid.cores.0: 0 is less than the minimum of 1", FIX]),
    "unknown key": ({"grid": {"sizes": [1000], "cores": [1], "corez": [2]}},
                    ["grid: Additional properties are not allowed ('corez' was unexpected)", FIX]),
    "size larger than the dataset": ({"grid": {"sizes": [1000, 70000], "cores": [1]}},
                                     ["grid.sizes [70000] exceed the 60000 training records of mnist (its "
                                      "published count, not downloaded yet). Fix: use sizes <= 60000"]),
    "cores not dividing the batch": ({"grid": {"sizes": [1000], "cores": [1, 3, 6]}},
                                     ["grid.cores [3, 6] do not divide training.batch_size 64",
                                      "use core counts that divide 64, or another batch size"]),
    "dataset.dir missing": ({"dataset": {"name": DATASET, "dir": "/nonexistent/fashion-mnist"}},
                            ["dataset.dir /nonexistent/fashion-mnist does not exist",
                             "Fix: put the four IDX files", "or set dataset.dir: null to download them"]),
}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Every bad configuration through `snakemake -n`, in parallel (each is a few seconds of
    parsing)."""
    workdirs = {name: tmp_path_factory.mktemp(name.replace(" ", "-")) for name in CONFIGS}  # not thread-safe

    def one(name):
        return workdirs[name], snakemake(workdirs[name], CONFIGS[name][0], "-n")

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CONFIGS, pool.map(one, CONFIGS)))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bad_config_gets_one_clear_error_before_any_job(dry_runs, name):
    workdir, proc = dry_runs[name]
    text = text_of(proc)
    assert proc.returncode != 0
    for expected in CONFIGS[name][1]:
        assert text.count(expected) == 1, f"{expected!r} not said once in:\n{text[-3000:]}"
    assert "ConfigError" in text and "Traceback" not in text
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.yaml"]  # no resources/, no results/


def test_dataset_dir_lacking_a_file_is_named_before_any_job(tmp_path):
    folder = offline(tmp_path / "fm", missing="t10k-labels-idx1-ubyte.gz")
    proc = snakemake(tmp_path, {"dataset": {"name": DATASET, "dir": str(folder)}}, "-n")
    text = text_of(proc)
    assert proc.returncode != 0
    assert f"dataset.dir {folder} lacks t10k-labels-idx1-ubyte.gz" in text
    assert not (tmp_path / "resources").exists()


# --- dataset files: the download and partition jobs ---------------------------------------------
SMALL_CONFIG = {"grid": {"sizes": [256], "cores": [1]}, "training": {"test_size": 500},
                "partition": {"files": 2}}


def test_truncated_gzip_in_dataset_dir(tmp_path):
    whole = (FASHION_MNIST / "train-labels-idx1-ubyte.gz").read_bytes()
    folder = offline(tmp_path / "fm", broken={"train-labels-idx1-ubyte.gz": whole[: len(whole) // 2]})
    config = {**SMALL_CONFIG, "dataset": {"name": DATASET, "dir": str(folder)}}
    proc = snakemake(tmp_path / "work", config, "--cores", "1", f"resources/{DATASET}/raw/train-labels-idx1-ubyte.gz")
    text = text_of(proc)
    assert proc.returncode != 0
    assert (f"{folder}/train-labels-idx1-ubyte.gz: not a valid IDX file: the gzip stream is truncated "
            "(download cut short?). It is not the original fashion-mnist file: replace it with an "
            "unmodified copy, or unset dataset.dir to download it.") in text
    # nothing half-copied under the final name
    assert not (tmp_path / "work" / f"resources/{DATASET}/raw/train-labels-idx1-ubyte.gz").exists()


def test_checksum_mismatch_after_every_mirror(tmp_path):
    wrong = idx(2049, [60000], bytes(60000))  # a valid labels file, not Fashion-MNIST's
    mirrors = []
    for name in ("mirror-a", "mirror-b"):
        (tmp_path / name).mkdir()
        for file in IDX_FILES:
            (tmp_path / name / file).write_bytes(wrong)
        mirrors.append((tmp_path / name).as_uri() + "/")
    config = {**SMALL_CONFIG, "dataset": {"name": DATASET, "dir": None, "mirrors": mirrors}}
    proc = snakemake(tmp_path / "work", config, "--cores", "1", f"resources/{DATASET}/raw/train-images-idx3-ubyte.gz")
    text = text_of(proc)
    assert proc.returncode != 0
    assert "could not fetch train-images-idx3-ubyte.gz of dataset 'fashion-mnist'" in text
    assert "every mirror failed" in text
    for mirror in mirrors:
        assert f"{mirror}train-images-idx3-ubyte.gz: checksum mismatch" in text
    assert "Fix: check the network connection" in text and "set dataset.dir to the folder holding them" in text


def raw_dir_with(workdir: Path, replaced: dict[str, bytes]) -> None:
    """resources/<dataset>/raw as a finished download step left it, then damaged on disk."""
    raw = workdir / "resources" / DATASET / "raw"
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        if name in replaced:
            (raw / name).write_bytes(replaced[name])
        else:
            (raw / name).symlink_to(FASHION_MNIST / name)


def test_wrong_magic_number_in_the_raw_folder_stops_the_run_before_any_job(tmp_path):
    # an images header on the labels file
    raw_dir_with(tmp_path, {"t10k-labels-idx1-ubyte.gz": idx(2051, [10000, 1, 1], bytes(10000))})
    config = {**SMALL_CONFIG, "dataset": {"name": DATASET, "dir": str(FASHION_MNIST)}}
    proc = snakemake(tmp_path, config, "--cores", "1", f"resources/{DATASET}/test")
    text = text_of(proc)
    assert proc.returncode != 0
    assert (f"resources/{DATASET}/raw/t10k-labels-idx1-ubyte.gz: magic 2051: 3 dimension(s), expected 1 for "
            "labels (magic 2049). Fix: delete it and rerun to download it again") in text
    assert "ConfigError" in text  # the header is read before any job (dlscale.custom_dataset)
    assert not (tmp_path / "resources" / DATASET / "test").exists()


def test_image_label_count_mismatch_in_the_raw_folder_stops_the_run_before_any_job(tmp_path):
    labels = gzip.decompress((FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    raw_dir_with(tmp_path, {"t10k-labels-idx1-ubyte.gz": idx(2049, [9999], labels[8:8 + 9999])})
    config = {**SMALL_CONFIG, "dataset": {"name": DATASET, "dir": str(FASHION_MNIST)}}
    proc = snakemake(tmp_path, config, "--cores", "1", f"resources/{DATASET}/test")
    text = text_of(proc)
    assert proc.returncode != 0
    assert (f"10000 images but resources/{DATASET}/raw/t10k-labels-idx1-ubyte.gz has 9999 labels. Fix: the "
            "two files must hold the same records, one label per image: if they came from different downloads, "
            "delete both and rerun to fetch them again") in text
    assert "ConfigError" in text


# --- a malformed metrics file met by the aggregation --------------------------------------------
def metrics_doc(size: int, cores: int) -> dict:
    return {
        "schema_version": 1, "dataset": DATASET, "backend": "bigdl", "scaling": "strong",
        "size": size, "cores": cores, "repetition": 1, "epochs": 1, "batch_size": 64,
        "optimizer": "adam", "learning_rate": 0.001, "seed": 42, "hostnames": ["node01"],
        "slurm_job_id": None, "cpus_allowed": list(range(cores)), "threads": {"OMP_NUM_THREADS": ["1"]},
        "versions": {"python": "3.9.18", "spark": "3.1.3", "bigdl": "2.4.0"},
        "timings_s": {"cluster_start": 5.0, "data_load": 2.0, "train": 20.0 / cores, "evaluate": 1.0,
                      "cluster_stop": 1.0, "total": 30.0 / cores},
        "records_per_s": size * cores / 20.0, "final_loss": 1.0, "test_accuracy": 0.5, "test_records": 500,
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00",
    }


def test_malformed_metrics_file_is_named_by_the_aggregation(tmp_path):
    good = tmp_path / f"results/cells/{DATASET}/bigdl/strong/n256/c1/r1/metrics.json"
    bad = tmp_path / f"results/cells/{DATASET}/bigdl/strong/n256/c2/r1/metrics.json"
    for path, doc in ((good, metrics_doc(256, 1)), (bad, metrics_doc(256, 2))):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(doc, indent=2))
    bad.write_text(bad.read_text()[:200])  # truncated on shared storage
    config = {**SMALL_CONFIG, "grid": {"sizes": [256], "cores": [1, 2]},
              "dataset": {"name": DATASET, "dir": str(FASHION_MNIST)}}
    proc = snakemake(tmp_path, config, "--cores", "1", f"results/tables/{DATASET}/cells.csv")
    text = text_of(proc)
    assert proc.returncode != 0
    assert "rule train_cell" not in text  # the existing cells are not rerun
    assert f"results/cells/{DATASET}/bigdl/strong/n256/c2/r1/metrics.json is not valid JSON" in text
    assert (f"Fix: delete this cell's directory (results/cells/{DATASET}/bigdl/strong/n256/c2/r1) "
            "and rerun the workflow to train it again.") in text
    assert f"n256/c1/r1/metrics.json" not in text.split("malformed metrics file")[1].split("Fix")[0]
