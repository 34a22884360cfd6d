"""Checks of the configuration that a JSON schema cannot express, with one clear message each.

The schema (workflow/schemas/config.schema.yaml) checks types and ranges first; these check the
values against each other and against the dataset, before any job starts.
"""

from __future__ import annotations

from typing import Dict, List

from dlscale.custom_dataset import dataset_problems


class ConfigError(ValueError):
    """The configuration cannot run; the message lists every problem and its fix."""


def config_problems(config: Dict) -> List[str]:
    name = config["dataset"]["name"]
    # The dataset block, and the record counts read from the files (None: not on disk yet; the
    # partition step checks the sizes then).
    problems, records, counted_in = dataset_problems(config["dataset"])
    too_big = [size for size in config["grid"]["sizes"] if records and size > records["train"]]
    if too_big:
        problems.append(
            "grid.sizes %s exceed the %d training records of %s (%s). Fix: use sizes <= %d"
            % (too_big, records["train"], name, counted_in, records["train"])
        )
    test_size = config["training"].get("test_size")
    if records and test_size is not None and test_size > records["test"]:
        problems.append(
            "training.test_size %d exceeds the %d test records of %s (%s). Fix: use <= %d or null"
            % (test_size, records["test"], name, counted_in, records["test"])
        )
    batch = config["training"]["batch_size"]
    if "strong" in config.get("scaling_modes", ["strong"]):
        # BigDL splits the global batch evenly over all cores and rejects the job mid-run otherwise.
        bad = [cores for cores in config["grid"]["cores"] if batch % cores]
        if bad:
            problems.append(
                "grid.cores %s do not divide training.batch_size %d (BigDL splits the global batch "
                "evenly over the cores): use core counts that divide %d, or another batch size"
                % (bad, batch, batch)
            )
    per_node = config.get("slurm", {}).get("cores_per_node")
    if per_node:
        uneven = [cores for cores in config["grid"]["cores"] if cores > per_node and cores % per_node]
        if uneven:
            problems.append(
                "grid.cores %s span nodes but are not a multiple of slurm.cores_per_node %d "
                "(one Spark worker of %d cores per node): use multiples of %d"
                % (uneven, per_node, per_node, per_node)
            )
    return problems


def check_config(config: Dict) -> None:
    problems = config_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
