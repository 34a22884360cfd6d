"""Load the cells' ``metrics.json`` into one table, each file checked against the metrics schema.

The schema ships with the package (``dlscale/schemas/metrics.schema.yaml``), so loading works
from an installed package as well as from a source checkout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from dlscale import paths
from dlscale.grid import CELL_KEYS

SCHEMA_RESOURCE = "schemas/metrics.schema.yaml"  # inside the dlscale package
RERUN_FIX = "Fix: delete this cell's directory ({cell_dir}) and rerun the workflow to train it again."


class MetricsError(Exception):
    """One or more metrics.json files are unreadable, invalid or misplaced (or the schema is)."""


def metrics_schema(schema_path: str | Path | None = None) -> dict[str, Any]:
    """The metrics schema: the package's own, or the file at ``schema_path``."""
    source = Path(schema_path) if schema_path else resources.files("dlscale").joinpath(SCHEMA_RESOURCE)
    try:
        return yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as err:
        raise MetricsError(
            f"Cannot read the metrics schema {source}: {err}. Fix: reinstall dlscale (pip install -e .) so "
            f"that its package data holds dlscale/{SCHEMA_RESOURCE}, or pass schema_path= an existing file."
        ) from err


@lru_cache(maxsize=4)
def _validator(schema_path: str | None) -> jsonschema.protocols.Validator:
    schema = metrics_schema(schema_path)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _reject_non_finite(constant: str) -> float:
    # json accepts NaN/Infinity, and NaN slips through the schema's minimum checks
    raise ValueError(f"non-finite number {constant} is not valid JSON")


def _read_metrics(path: Path, validator: jsonschema.protocols.Validator) -> tuple[dict[str, Any] | None, str | None]:
    """The parsed document, or None and what is wrong with it."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_non_finite)
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"
    except ValueError as err:  # JSONDecodeError is a ValueError
        return None, f"is not valid JSON ({err})"
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        reasons = "; ".join(f"{_json_pointer(e)}: {e.message}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        return None, f"does not match the metrics schema: {reasons}{more}"
    misplaced = _placement_problem(path, doc)
    return (None, misplaced) if misplaced else (doc, None)


def _json_pointer(error: jsonschema.ValidationError) -> str:
    return "/" + "/".join(str(p) for p in error.absolute_path) if error.absolute_path else "(top level)"


def _placement_problem(path: Path, doc: dict[str, Any]) -> str | None:
    """A file under results/cells/ must sit in the directory of the cell it describes.

    Tables are keyed on the file's content, so a copied or mislabelled file would silently
    land in the wrong table cell.
    """
    parent = path.parent.as_posix()
    if "results/cells/" not in parent + "/":
        return None
    expected = paths.cell_dir(*(doc[k] for k in CELL_KEYS))
    if parent == expected or parent.endswith("/" + expected):
        return None
    return f"describes the cell {expected} but lives in {parent}"


def load_metrics(metrics_paths: Iterable[str | Path], schema_path: str | Path | None = None) -> pd.DataFrame:
    """One row per cell, validated against the metrics schema.

    ``timings_s.<phase>`` become ``t_<phase>`` columns, ``versions``/``threads`` entries
    become ``version_<key>``/``threads_<key>``; ``hostnames`` and ``cpus_allowed`` are kept
    as comma-separated strings (plus ``n_cpus_allowed``); ``metrics_path`` names the file.
    Every bad file is reported in one :class:`MetricsError`.
    """
    validator = _validator(str(schema_path) if schema_path else None)
    rows, problems = [], []
    for path in dict.fromkeys(Path(p) for p in metrics_paths):  # dedupe, keep order
        doc, problem = _read_metrics(path, validator)
        if problem:
            problems.append(f"  {path} {problem}.\n    " + RERUN_FIX.format(cell_dir=path.parent))
        else:
            rows.append(flatten_metrics(doc, path))
    if problems:
        raise MetricsError(f"{len(problems)} malformed metrics file(s):\n" + "\n".join(problems))
    cells = pd.DataFrame(rows, columns=None if rows else list(CELL_KEYS))
    _check_unique_cells(cells)
    return _order_columns(cells).sort_values(list(CELL_KEYS), ignore_index=True)


def flatten_metrics(doc: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """One flat row of scalars from one metrics document."""
    row: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "timings_s":
            row.update({f"t_{phase}": float(seconds) for phase, seconds in value.items()})
        elif key in ("versions", "threads") and isinstance(value, dict):
            prefix = "version" if key == "versions" else "threads"
            row.update({f"{prefix}_{k}": _scalar(v) for k, v in value.items()})
        else:
            row[key] = _scalar(value)
    row["n_cpus_allowed"] = len(doc["cpus_allowed"])
    row["metrics_path"] = Path(path).as_posix()
    return row


def _scalar(value: Any) -> Any:
    """A CSV-friendly value: lists of scalars comma-joined (hostnames, cpus_allowed), other
    containers as JSON."""
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ",".join(str(v) for v in value)
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _check_unique_cells(cells: pd.DataFrame) -> None:
    if cells.empty:
        return
    dupes = cells[cells.duplicated(list(CELL_KEYS), keep=False)]
    if not dupes.empty:
        files = "\n".join(f"  {p}" for p in dupes["metrics_path"])
        raise MetricsError(
            f"Several metrics files describe the same cell:\n{files}\n"
            "Fix: keep one file per cell (delete the stray copies) and rerun."
        )


def _order_columns(cells: pd.DataFrame) -> pd.DataFrame:
    first = [*CELL_KEYS, "epochs", "batch_size"]
    timings = [c for c in cells.columns if c.startswith("t_")]
    results = ["records_per_s", "final_loss", "test_accuracy"]
    head = [c for c in (*first, *timings, *results) if c in cells.columns]
    tail = sorted(c for c in cells.columns if c not in head and c != "metrics_path")
    return cells[head + tail + (["metrics_path"] if "metrics_path" in cells.columns else [])]


def read_cells_csv(path: str | Path) -> pd.DataFrame:
    """Read a ``cells.csv`` back with the string columns as strings (``cpus_allowed`` "0")."""
    as_text = {
        "dataset": str,
        "backend": str,
        "scaling": str,
        "hostnames": str,
        "cpus_allowed": str,
        "slurm_job_id": str,
        "metrics_path": str,
    }
    return pd.read_csv(path, dtype=as_text)
