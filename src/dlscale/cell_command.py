"""The command line of a cell, for both backends: one builder, used by the cell rules.

``shell_template`` returns a Snakemake ``shell:`` string: the configuration's values (training,
Spark, interpreter) are written into it, the cell's coordinates stay Snakemake placeholders
(``{wildcards.size}``, ``{output}``, ``{log}``). The configuration is part of the command, not
of the rule's ``params``, on purpose: the profiles' ``rerun-triggers`` include ``params`` (so
data preparation and tables follow their settings), and a completed cell must not rerun when
a training setting changes (each metrics.json records the settings it ran with).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from dlscale import paths

# backend -> (module run by the cell rule, its virtual environment under .venv/, the trainer.*
# config key that overrides that environment's interpreter)
BACKENDS = {
    "bigdl": ("dlscale.cell", "trainer", "python"),
    "torch": ("dlscale.torch_trainer", "torch", "torch_python"),
}

# The folder that holds this package (src/ of the checkout): the cell's interpreter imports
# dlscale from there, whatever environment it belongs to (trainer.python may be any Python 3.9).
SRC_DIR = str(Path(__file__).resolve().parent.parent)


def interpreter(config: Mapping[str, Any], backend: str, basedir: str) -> str:
    """The Python that runs a cell: trainer.python / trainer.torch_python, else the project's
    environment (.venv/trainer: Python 3.9, pyspark, BigDL, Java 11; .venv/torch: PyTorch)."""
    _, venv, key = BACKENDS[backend]
    configured = (config.get("trainer") or {}).get(key)
    return configured or str(Path(basedir) / ".venv" / venv / "bin" / "python")


def _literal(value: Any) -> str:
    """A configuration value in a shell template: shell-quoted, braces doubled for Snakemake."""
    return shlex.quote(str(value)).replace("{", "{{").replace("}", "}}")


def cell_arguments(
    backend: str,
    training: Mapping[str, Any],
    spark: Optional[Mapping[str, Any]] = None,
    cores_per_node: Optional[int] = None,
) -> List[Tuple[str, str]]:
    """(option, template value) pairs of a cell: placeholders for its coordinates, literals
    for the configuration. Spark settings and cores per node are BigDL's only."""
    dataset = "{wildcards.dataset}"
    args = [
        ("--dataset", dataset),
        ("--scaling", "{wildcards.scaling}"),
        ("--size", "{wildcards.size}"),
        ("--cores", "{wildcards.cores}"),
        ("--repetition", "{wildcards.rep}"),
        ("--train-dir", paths.subset_dir(dataset, "{wildcards.size}")),
        ("--test-dir", paths.test_dir(dataset)),
        ("--out", "{output}"),
    ]
    for key in ("epochs", "batch_size", "optimizer", "learning_rate", "seed"):
        args.append(("--" + key.replace("_", "-"), _literal(training[key])))
    if backend == "bigdl":
        if spark is None or cores_per_node is None:
            raise ValueError("a BigDL cell needs the spark settings and slurm.cores_per_node")
        for key in ("executor_memory", "driver_memory", "worker_memory"):
            args.append(("--" + key.replace("_", "-"), _literal(spark[key])))
        args.append(("--single-node-cluster", _literal(spark["single_node_cluster"])))
        args.append(("--cores-per-node", _literal(int(cores_per_node))))
    return args


def shell_template(
    backend: str,
    python: str,
    training: Mapping[str, Any],
    spark: Optional[Mapping[str, Any]] = None,
    cores_per_node: Optional[int] = None,
    src_dir: str = SRC_DIR,
) -> str:
    """The ``shell:`` of a cell rule.

    ``exec``: Snakemake (or the jobstep) is the cell's parent, so ``--exit-with-parent`` stops
    the cell, and its Spark cluster, when a killed Snakemake leaves it orphaned. PYTHONPATH puts
    this package first for the cell and everything it starts (Spark's Python workers, a remote
    node's worker through srun, which passes the environment on).
    """
    module = BACKENDS[backend][0]
    pythonpath = _literal(src_dir) + "${{PYTHONPATH:+:$PYTHONPATH}}"
    words = [f"PYTHONPATH={pythonpath}", "exec", _literal(python), "-m", module, "--exit-with-parent"]
    for option, value in cell_arguments(backend, training, spark, cores_per_node):
        words += [option, value]
    return " ".join(words) + " > {log} 2>&1"
