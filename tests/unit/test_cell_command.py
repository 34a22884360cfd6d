"""The cell's command line (dlscale.cell_command): one builder for both backends, run here through
bash as Snakemake formats and runs it, with a stand-in interpreter that reports what it got."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlscale.cell_command import SRC_DIR, cell_arguments, interpreter, shell_template

TRAINING = {"epochs": 2, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.001, "seed": 42,
            "test_size": None}
SPARK = {"executor_memory": "1g", "driver_memory": "2g", "worker_memory": "4g", "single_node_cluster": "daemons"}
WILDCARDS = SimpleNamespace(dataset="fashion-mnist", scaling="weak", size="512", cores="2", rep="3")


def run(template: str, tmp_path: Path, env_pythonpath: str | None = None) -> tuple[list[str], str]:
    """Format the template as Snakemake does for a job, run it with bash; the stand-in python
    writes its PYTHONPATH and then its arguments, one a line, to the job's log."""
    log = tmp_path / "cell.log"
    command = template.format(wildcards=WILDCARDS, output="out/metrics.json", log=str(log))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if env_pythonpath:
        env["PYTHONPATH"] = env_pythonpath
    subprocess.run(["bash", "-euo", "pipefail", "-c", command], check=True, env=env, cwd=tmp_path)
    pythonpath, *argv = log.read_text().splitlines()
    return argv, pythonpath


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    folder = tmp_path / "my env {x}"  # a space and braces: quoted, and not Snakemake placeholders
    folder.mkdir()
    script = folder / "python"
    script.write_text('#!/bin/sh\necho "$PYTHONPATH"\nprintf "%s\\n" "$@"\n')
    script.chmod(0o755)
    return str(script)


def test_bigdl_command(fake_python, tmp_path):
    argv, pythonpath = run(shell_template("bigdl", fake_python, TRAINING, SPARK, 8), tmp_path)
    assert pythonpath == SRC_DIR
    assert argv == ["-m", "dlscale.cell", "--exit-with-parent",
                    "--dataset", "fashion-mnist", "--scaling", "weak", "--size", "512", "--cores", "2",
                    "--repetition", "3", "--train-dir", "resources/fashion-mnist/subsets/n512",
                    "--test-dir", "resources/fashion-mnist/test", "--out", "out/metrics.json",
                    "--epochs", "2", "--batch-size", "64", "--optimizer", "adam", "--learning-rate", "0.001",
                    "--seed", "42", "--executor-memory", "1g", "--driver-memory", "2g", "--worker-memory", "4g",
                    "--single-node-cluster", "daemons", "--cores-per-node", "8"]


def test_torch_command_has_no_spark_options_and_keeps_the_callers_pythonpath(fake_python, tmp_path):
    argv, pythonpath = run(shell_template("torch", fake_python, TRAINING), tmp_path, env_pythonpath="/elsewhere")
    assert pythonpath == f"{SRC_DIR}:/elsewhere"
    assert argv[:3] == ["-m", "dlscale.torch_trainer", "--exit-with-parent"]
    assert argv[-2:] == ["--seed", "42"] and "--executor-memory" not in argv and "--cores-per-node" not in argv


def test_the_command_execs_the_interpreter():
    """`exec`: the cell's parent is Snakemake (or the jobstep), which --exit-with-parent watches."""
    assert " exec " in shell_template("torch", "python", TRAINING)


def test_bigdl_needs_its_spark_settings():
    with pytest.raises(ValueError, match="spark"):
        cell_arguments("bigdl", TRAINING)


def test_interpreter_from_config_or_the_project_environment():
    assert interpreter({"trainer": {"python": "/opt/py39/bin/python"}}, "bigdl", "/repo") == "/opt/py39/bin/python"
    assert interpreter({"trainer": {"python": None}}, "bigdl", "/repo") == "/repo/.venv/trainer/bin/python"
    assert interpreter({"trainer": {}}, "torch", "/repo") == "/repo/.venv/torch/bin/python"
    assert interpreter({"trainer": {"torch_python": "/t/python"}}, "torch", "/repo") == "/t/python"


def test_src_dir_holds_the_package():
    assert (Path(SRC_DIR) / "dlscale" / "cell.py").is_file()
