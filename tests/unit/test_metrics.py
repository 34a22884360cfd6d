"""Loading metrics.json: one flat row per cell, every bad file named with its fix."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dlscale import paths
from dlscale.aggregate import aggregate
from dlscale.grid import Grid
from dlscale.metrics import MetricsError, load_metrics, metrics_schema, read_cells_csv
from dlscale.paths import CELLS_CSV
from synthetic_cells import DATASET, metrics_doc, write_grid, write_metrics


@pytest.fixture
def cells(tmp_path: Path) -> pd.DataFrame:
    return load_metrics(write_grid(tmp_path))


def test_load_metrics_one_flat_row_per_cell(cells: pd.DataFrame) -> None:
    assert len(cells) == 12
    assert {"t_total", "t_train", "t_cluster_start", "t_evaluate", "version_spark", "threads_OMP_NUM_THREADS"} <= set(
        cells.columns
    )
    assert "timings_s" not in cells.columns
    row = cells[(cells["size"] == 200) & (cells["cores"] == 2) & (cells["repetition"] == 2)].iloc[0]
    assert row["t_train"] == 9.0 and row["t_total"] == 12.0
    assert row["hostnames"] == "node01" and row["cpus_allowed"] == "0,1" and row["n_cpus_allowed"] == 2
    # sorted by cell coordinates
    assert list(cells["size"]) == sorted(cells["size"])


def test_cells_csv_round_trip_keeps_strings(tmp_path: Path) -> None:
    write_metrics(tmp_path, metrics_doc(100, 1, 1, 5.0))
    written = aggregate(
        Grid.from_params(DATASET, "bigdl", "strong", [100], [1], 1), tmp_path / "tables", workdir=tmp_path
    )
    back = read_cells_csv(tmp_path / "tables" / CELLS_CSV)
    assert tmp_path / "tables" / CELLS_CSV in written
    assert back.loc[0, "cpus_allowed"] == "0" and back.loc[0, "t_train"] == 5.0


def test_malformed_json_names_the_file_and_the_fix(tmp_path: Path) -> None:
    good = write_metrics(tmp_path, metrics_doc(100, 1, 1, 5.0))
    bad = write_metrics(tmp_path, metrics_doc(100, 2, 1, 5.0))
    bad.write_text('{"schema_version": 1, "dataset": ', encoding="utf-8")
    with pytest.raises(MetricsError) as err:
        load_metrics([good, bad])
    message = str(err.value)
    assert str(bad) in message and str(good) not in message
    assert "not valid JSON" in message
    assert "delete this cell's directory" in message and str(bad.parent) in message


def test_schema_violation_names_the_file_and_the_field(tmp_path: Path) -> None:
    doc = metrics_doc(100, 1, 1, 5.0)
    del doc["timings_s"]["train"]
    doc["test_accuracy"] = 1.5
    bad = write_metrics(tmp_path, doc)
    with pytest.raises(MetricsError, match="does not match the metrics schema") as err:
        load_metrics([bad])
    message = str(err.value)
    assert str(bad) in message and "'train' is a required property" in message and "/test_accuracy" in message


def test_nan_timing_is_rejected(tmp_path: Path) -> None:
    path = write_metrics(tmp_path, metrics_doc(100, 1, 1, 5.0))
    path.write_text(path.read_text().replace('"train": 5.0', '"train": NaN'), encoding="utf-8")
    with pytest.raises(MetricsError, match="non-finite"):
        load_metrics([path])


def test_misplaced_metrics_file_is_rejected(tmp_path: Path) -> None:
    path = write_metrics(tmp_path, metrics_doc(100, 1, 1, 5.0))
    stray = tmp_path / paths.cell_dir(DATASET, "bigdl", "strong", 100, 2, 1) / "metrics.json"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(path.read_bytes())  # a 1-core result copied into the 2-core cell
    with pytest.raises(MetricsError, match="describes the cell .*/c1/r1 but lives in .*/c2/r1"):
        load_metrics([stray])


def test_two_files_for_one_cell_are_refused(tmp_path: Path) -> None:
    first = write_metrics(tmp_path / "a", metrics_doc(100, 1, 1, 5.0))
    second = write_metrics(tmp_path / "b", metrics_doc(100, 1, 1, 6.0))
    with pytest.raises(MetricsError, match="Several metrics files describe the same cell"):
        load_metrics([first, second])


def test_the_schema_is_package_data_not_a_checkout_path(tmp_path: Path) -> None:
    schema = metrics_schema()
    assert "timings_s" in schema["required"]
    with pytest.raises(MetricsError, match="Fix: reinstall dlscale"):
        metrics_schema(tmp_path / "absent.schema.yaml")
