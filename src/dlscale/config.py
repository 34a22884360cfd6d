"""Checks of the configuration that a JSON schema cannot express, with one clear message each.

The schema (workflow/schemas/config.schema.yaml) checks types and ranges first; these check the
values against each other and against the dataset, before any job starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Union

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


FIX = (
    "Fix: correct these keys in the file given with --configfile (or --config); config/README.md "
    "lists every key with its type, range and default."
)


def _error(problems: List[str]) -> ConfigError:
    return ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems) + "\n" + FIX)


def check_config(config: Dict) -> None:
    """The cross checks alone (a config the schema already accepted)."""
    problems = config_problems(config)
    if problems:
        raise _error(problems)


def load_schema(path: Union[str, Path]) -> Dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def schema_problems(config: Dict, schema: Dict) -> List[str]:
    """Every schema error, as ``key.path: message``; fills in the schema's defaults as it goes
    (what Snakemake's ``validate(config, schema)`` does, which stops at the first error)."""
    import jsonschema

    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if isinstance(prop, dict) and "default" in prop:
                    instance.setdefault(name, copy.deepcopy(prop["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    validator = jsonschema.validators.extend(base, {"properties": properties_with_defaults})(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(part) for part in e.absolute_path])
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]


def dataset_dir_problems(config: Dict) -> List[str]:
    """dataset.dir must hold the raw files the download step still has to copy: said before
    any job, not when the download job fails."""
    from dlscale.datasets import RAW_FILE_NAMES
    from dlscale.paths import raw_dir

    folder = config["dataset"].get("dir")
    if not folder:
        return []
    name = config["dataset"]["name"]
    needed = [f for f in RAW_FILE_NAMES if not (Path(raw_dir(name)) / f).exists()]
    absent = [f for f in needed if not (Path(folder) / f).is_file()]
    if not absent:
        return []
    where = "does not exist" if not Path(folder).is_dir() else "lacks " + ", ".join(absent)
    return [
        f"dataset.dir {folder} {where}: the download step copies the {name} files from there. "
        f"Fix: put the four IDX files ({', '.join(RAW_FILE_NAMES)}) in that folder, or set "
        "dataset.dir: null to download them."
    ]


def validate_config(config: Dict, schema: Union[str, Path, Dict]) -> None:
    """Everything the workflow checks before any job: the schema (whose defaults it fills in),
    then the cross checks and dataset.dir. One ConfigError lists every problem, ending with
    the fix. The cross checks assume the types the schema asks for: where a key has a wrong one
    they cannot run, and its schema problem is what is said."""
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    problems = schema_problems(config, schema)
    try:
        problems += config_problems(config) + dataset_dir_problems(config)
    except (ArithmeticError, AttributeError, KeyError, TypeError, ValueError):
        if not problems:
            raise
    if problems:
        raise _error(problems)
