"""Configuration: the schema and the cross-field checks give one clear error each."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from dlscale.config import FIX, ConfigError, check_config, config_problems, dataset_dir_problems, validate_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def load(name):
    return yaml.safe_load((REPO / "config" / name).read_text())


def merged_demo():
    config = load("config.yaml")
    for key, value in load("demo.yaml").items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return config


@pytest.mark.parametrize("config", [load("config.yaml"), merged_demo()], ids=["published", "demo"])
def test_shipped_configs_are_valid(config):
    jsonschema.validate(config, SCHEMA)
    assert config_problems(config) == []


def test_published_grid_is_the_default():
    config = load("config.yaml")
    assert config["grid"]["cores"] == [1, 2, 4, 8, 16, 32]
    assert config["grid"]["sizes"] == [1000, 5000, 10000, 30000, 60000]
    assert config["training"]["batch_size"] == 64
    assert config["dataset"]["name"] == "mnist"


@pytest.mark.parametrize(
    "path,value",
    [
        (("dataset", "name"), "../cifar10"),  # a name is a folder of results/
        (("grid", "cores"), [0, 1]),
        (("grid", "sizes"), "1000"),
        (("training", "epochs"), 0),
        (("spark", "executor_memory"), "lots"),
    ],
)
def test_schema_rejects(path, value):
    config = copy.deepcopy(load("config.yaml"))
    config[path[0]][path[1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, SCHEMA)


def test_unknown_key_is_rejected():
    config = copy.deepcopy(load("config.yaml"))
    config["grid"]["corez"] = [1]
    with pytest.raises(jsonschema.ValidationError, match="corez"):
        jsonschema.validate(config, SCHEMA)


def test_size_larger_than_dataset():
    config = load("config.yaml")
    config["grid"]["sizes"] = [1000, 70000]
    with pytest.raises(ConfigError, match=r"\[70000\] exceed the 60000 training records of mnist"):
        check_config(config)


def test_cores_that_do_not_divide_the_batch():
    config = load("config.yaml")
    config["grid"]["cores"] = [1, 3, 6]
    with pytest.raises(ConfigError, match=r"grid.cores \[3, 6\] do not divide training.batch_size 64"):
        check_config(config)


def test_weak_scaling_allows_any_core_count():
    config = load("config.yaml")
    config["grid"]["cores"] = [1, 3]
    config["scaling_modes"] = ["weak"]
    assert config_problems(config) == []


def test_multinode_cores_must_fill_whole_nodes():
    config = load("config.yaml")
    config["slurm"] = {"cores_per_node": 24}
    with pytest.raises(ConfigError, match=r"grid.cores \[32\] span nodes but are not a multiple of slurm.cores_per_node 24"):
        check_config(config)
    config["grid"]["cores"] = [1, 2, 4, 8, 16, 48]
    config["training"]["batch_size"] = 96
    assert config_problems(config) == []


# --- validate_config: everything the workflow checks before any job, one error ----------------
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_validate_config_fills_in_the_defaults():
    config = {"dataset": {"name": "mnist"}, "grid": {"sizes": [1000], "cores": [1]}, "training": {}}
    validate_config(config, SCHEMA_PATH)
    assert config["training"]["batch_size"] == 64 and config["grid"]["repetitions"] == 1
    assert config["dataset"]["dir"] is None


def test_validate_config_lists_every_schema_problem_in_one_error_ending_with_the_fix():
    config = load("config.yaml")
    config["training"]["epochs"] = "two"
    config["grid"]["corez"] = [1]
    with pytest.raises(ConfigError) as caught:
        validate_config(config, SCHEMA_PATH)
    message = str(caught.value)
    assert "  - grid: Additional properties are not allowed ('corez' was unexpected)" in message
    assert "  - training.epochs: 'two' is not of type 'integer'" in message
    assert message.splitlines()[-1] == FIX and FIX.startswith("Fix: ")


def test_validate_config_lists_the_cross_checks_and_dataset_dir_together(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no resources/ here: the download step still has to copy the files
    config = load("config.yaml")
    config["grid"]["cores"] = [1, 3]
    config["dataset"]["dir"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError) as caught:
        validate_config(config, SCHEMA_PATH)
    problems = [line for line in str(caught.value).splitlines() if line.startswith("  - ")]
    assert len(problems) == 2, problems
    assert "grid.cores [3] do not divide training.batch_size 64" in problems[0]
    assert f"dataset.dir {tmp_path / 'nowhere'} does not exist" in problems[1]
    assert str(caught.value).endswith(FIX)


def test_dataset_dir_lacking_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (folder / name).write_bytes(b"")
    config = {"dataset": {"name": "mnist", "dir": str(folder)}}
    [problem] = dataset_dir_problems(config)
    assert problem.startswith(f"dataset.dir {folder} lacks t10k-labels-idx1-ubyte.gz")
    # once downloaded (resources/<dataset>/raw/ has it), the folder need not hold it any more
    raw = tmp_path / "resources" / "mnist" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    assert dataset_dir_problems(config) == []


def test_validate_config_lists_schema_and_cross_check_problems_together():
    config = load("config.yaml")
    config["training"]["epochs"] = 0
    config["grid"]["cores"] = [1, 3]
    with pytest.raises(ConfigError) as caught:
        validate_config(config, SCHEMA_PATH)
    problems = [line for line in str(caught.value).splitlines() if line.startswith("  - ")]
    assert [p.split(" ")[3] for p in problems] == ["training.epochs:", "grid.cores"], problems
