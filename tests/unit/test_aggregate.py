"""Aggregation: metrics.json -> seed-shaped runtime / speed-up / efficiency tables."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dlscale import paths
from dlscale.grid import Grid
from dlscale.aggregate import (
    AVERAGE,
    CELLS_CSV,
    MISSING_CSV,
    MetricsError,
    MissingCellsError,
    aggregate,
    efficiency_table,
    load_metrics,
    load_reference,
    read_cells_csv,
    runtime_table,
    speedup_table,
    table_filenames,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# the published tables, part of the repository (workflow/resources/published)
REFERENCE_DIR = REPO_ROOT / "workflow" / "resources" / "published"


def published_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The repository's published runtime and speed-up tables; a missing one fails the test."""
    missing = [name for name in ("seed_runtime_seconds.csv", "seed_speedup.csv") if not (REFERENCE_DIR / name).is_file()]
    if missing:
        pytest.fail(f"the published tables {missing} are missing from {REFERENCE_DIR}: they are part of the "
                    "repository (restore them with git checkout)", pytrace=False)
    loaded = load_reference(REFERENCE_DIR)
    assert loaded is not None, f"load_reference({REFERENCE_DIR}) found no tables"
    return loaded


DATASET = "fashion-mnist"
OVERHEAD_S = 3.0  # total = train + this, so the two phases give different tables
# train seconds of each (size, cores): one value per repetition (1, 2)
TRAIN_S = {
    (100, 1): [10.0, 12.0],
    (100, 2): [6.0, 5.0],
    (100, 4): [4.0, 4.0],
    (200, 1): [20.0, 22.0],
    (200, 2): [12.0, 9.0],
    (200, 4): [7.0, 7.5],
}
GRID = Grid.from_params(DATASET, ["bigdl"], ["strong"], [200, 100], [4, 1, 2], 2)


def metrics_doc(
    size: int, cores: int, repetition: int, train: float, *, scaling: str = "strong", dataset: str = DATASET
) -> dict:
    """A metrics document valid per workflow/schemas/metrics.schema.yaml."""
    return {
        "schema_version": 1,
        "dataset": dataset,
        "backend": "bigdl",
        "scaling": scaling,
        "size": size,
        "cores": cores,
        "repetition": repetition,
        "epochs": 2,
        "batch_size": 64,
        "optimizer": "adam",
        "learning_rate": 0.001,
        "seed": 42,
        "hostnames": ["node01"],
        "slurm_job_id": None,
        "cpus_allowed": list(range(cores)),
        "threads": {"OMP_NUM_THREADS": 1},
        "versions": {"python": "3.9.19", "spark": "3.1.3", "bigdl": "2.4.0"},
        "timings_s": {
            "cluster_start": 1.0,
            "data_load": 0.5,
            "train": train,
            "evaluate": 0.5,
            "cluster_stop": 1.0,
            "total": train + OVERHEAD_S,
        },
        "records_per_s": size * 2 / train,
        "final_loss": 0.4,
        "test_accuracy": 0.85,
        "test_records": 10000,
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:01:00Z",
    }


def write_metrics(root: Path, doc: dict) -> Path:
    """Write ``doc`` where the workflow puts it; return the path."""
    keys = ("dataset", "backend", "scaling", "size", "cores", "repetition")
    path = root / paths.cell_dir(*(doc[k] for k in keys)) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def write_grid(root: Path, train_s: dict = TRAIN_S, *, scaling: str = "strong", skip=()) -> list[Path]:
    """The synthetic grid's metrics files, minus the (size, cores, rep) in ``skip``."""
    return [
        write_metrics(root, metrics_doc(size, cores, rep, seconds, scaling=scaling))
        for (size, cores), runs in train_s.items()
        for rep, seconds in enumerate(runs, start=1)
        if (size, cores, rep) not in skip
    ]


@pytest.fixture
def cells(tmp_path: Path) -> pd.DataFrame:
    return load_metrics(write_grid(tmp_path))


# --------------------------------------------------------------------------- loading


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


# --------------------------------------------------------------------------- tables


def test_runtime_mean_and_std_over_repetitions(cells: pd.DataFrame) -> None:
    mean = runtime_table(cells, "train")
    std = runtime_table(cells, "train", "std")
    assert list(mean.index) == [100, 200] and list(mean.columns) == ["cores_1", "cores_2", "cores_4"]
    assert mean.loc[200, "cores_4"] == pytest.approx((7.0 + 7.5) / 2)
    assert mean.loc[100, "cores_2"] == pytest.approx(5.5)
    assert std.loc[100, "cores_1"] == pytest.approx(statistics.stdev([10.0, 12.0]))  # sample std
    assert std.loc[100, "cores_4"] == 0.0
    total = runtime_table(cells, "total")
    assert total.loc[200, "cores_2"] == pytest.approx((12.0 + 9.0) / 2 + OVERHEAD_S)


def test_speedup_and_efficiency_by_hand(cells: pd.DataFrame) -> None:
    speedup = speedup_table(runtime_table(cells, "train"))
    # mean train seconds: 100 -> 11, 5.5, 4 ; 200 -> 21, 10.5, 7.25
    expected_rows = {100: [1.0, 11 / 5.5, 11 / 4], 200: [1.0, 21 / 10.5, 21 / 7.25]}
    for size, values in expected_rows.items():
        assert list(speedup.loc[size]) == pytest.approx(values)
    assert list(speedup.index) == [100, 200, AVERAGE]
    assert list(speedup.loc[AVERAGE]) == pytest.approx([1.0, 2.0, (11 / 4 + 21 / 7.25) / 2])

    efficiency = efficiency_table(speedup)
    assert list(efficiency.loc[200]) == pytest.approx([1.0, 21 / 10.5 / 2, 21 / 7.25 / 4])
    assert list(efficiency.loc[AVERAGE]) == pytest.approx([1.0, 1.0, (11 / 4 / 4 + 21 / 7.25 / 4) / 2])


def test_baseline_is_smallest_core_count_without_one_core(tmp_path: Path) -> None:
    no_single_core = {k: v for k, v in TRAIN_S.items() if k[1] != 1}
    cells = load_metrics(write_grid(tmp_path, no_single_core))
    speedup = speedup_table(runtime_table(cells, "train"))
    assert list(speedup.columns) == ["cores_2", "cores_4"]
    assert speedup.loc[100, "cores_4"] == pytest.approx(5.5 / 4)
    assert efficiency_table(speedup).loc[100, "cores_4"] == pytest.approx(5.5 / 4 / 2)

    grid = Grid.from_params(DATASET, "bigdl", "strong", [100, 200], [2, 4], 2)
    aggregate(grid, tmp_path / "t", workdir=tmp_path)
    heading = (tmp_path / "t" / "speedup_train_bigdl_strong.md").read_text()
    assert "Speed-up vs 2 cores" in heading and "the grid has no 1-core cell" in heading


def test_weak_scaling_gets_its_own_tables_with_the_same_definitions(tmp_path: Path) -> None:
    # a weak cell trains the same records with a per-core batch (dlscale.cell.global_batch),
    # so speed-up stays T(1) / T(N); here the weak runs are twice as fast on 4 cores
    weak_s = {key: [t / 2 for t in runs] if key[1] == 4 else runs for key, runs in TRAIN_S.items()}
    write_grid(tmp_path)
    write_grid(tmp_path, weak_s, scaling="weak")
    grid = Grid.from_params(DATASET, "bigdl", ["strong", "weak"], GRID.sizes, GRID.cores, 2)
    written = aggregate(grid, tmp_path / "t", workdir=tmp_path)
    assert sorted(p.name for p in written) == sorted(table_filenames(["bigdl"], ["strong", "weak"]))
    weak = pd.read_csv(tmp_path / "t" / "speedup_train_bigdl_weak.csv", index_col="size")
    strong = pd.read_csv(tmp_path / "t" / "speedup_train_bigdl_strong.csv", index_col="size")
    assert weak.loc["200", "cores_4"] == round(21 / (7.25 / 2), 2)
    assert strong.loc["200", "cores_4"] == round(21 / 7.25, 2)
    assert "bigdl, weak scaling" in (tmp_path / "t" / "speedup_train_bigdl_weak.md").read_text()


def test_oversubscribed_cells_are_flagged_in_the_markdown(tmp_path: Path) -> None:
    write_grid(tmp_path)
    crowded = metrics_doc(100, 4, 1, 4.0)
    crowded["cpus_allowed"] = [0, 1]  # asked for 4 cores, could run on 2 CPUs
    write_metrics(tmp_path, crowded)
    aggregate(GRID, tmp_path / "t", workdir=tmp_path)
    md = (tmp_path / "t" / "speedup_total_bigdl_strong.md").read_text()
    assert "1 cell(s) had fewer CPUs than cores (4 cores, oversubscribed)" in md


def test_cells_that_were_not_alone_or_undersubscribed_are_flagged(tmp_path: Path) -> None:
    write_grid(tmp_path)
    aggregate(GRID, tmp_path / "clean", workdir=tmp_path)
    clean = (tmp_path / "clean" / "speedup_train_bigdl_strong.md").read_text()
    assert "**Warning:**" not in clean  # positive control: nothing to flag yet
    shared = metrics_doc(100, 2, 1, 4.0)
    shared.update(exclusive=False, overlapping_cells=["cell fashion-mnist bigdl strong n100/c1/r1 (pid 7)"])
    write_metrics(tmp_path, shared)
    starved = metrics_doc(100, 4, 1, 4.0)
    starved.update(undersubscribed=True, exclusive=True, overlapping_cells=[])
    write_metrics(tmp_path, starved)
    aggregate(GRID, tmp_path / "t", workdir=tmp_path)
    md = (tmp_path / "t" / "speedup_train_bigdl_strong.md").read_text()
    assert "1 cell(s) shared their node with another cell while they ran (2 cores, not exclusive)" in md
    assert "1 cell(s) ran executors that could use fewer CPUs than the cell's cores (4 cores, undersubscribed)" in md
    cells = pd.read_csv(tmp_path / "t" / "cells.csv")
    assert "n100/c1/r1" in cells.loc[cells["cores"] == 2, "overlapping_cells"].iloc[0]


def test_a_multinode_cell_is_not_oversubscribed_for_having_one_node_of_cpus(tmp_path: Path) -> None:
    write_grid(tmp_path)
    spanning = metrics_doc(100, 4, 1, 4.0)
    spanning.update(cpus_allowed=[0, 1], cores_per_node=2, nodes=["n1", "n2"])
    write_metrics(tmp_path, spanning)
    aggregate(GRID, tmp_path / "t", workdir=tmp_path)
    assert "**Warning:**" not in (tmp_path / "t" / "speedup_train_bigdl_strong.md").read_text()


def test_runtime_table_refuses_mixed_groups(tmp_path: Path) -> None:
    paths_ = write_grid(tmp_path) + write_grid(tmp_path, scaling="weak")
    with pytest.raises(ValueError, match="one \\(dataset, backend, scaling\\) group"):
        runtime_table(load_metrics(paths_), "train")


# --------------------------------------------------------------------------- published table


@pytest.fixture
def reference() -> tuple[pd.DataFrame, pd.DataFrame]:
    return published_tables()


def test_reproduces_published_speedup_table(reference) -> None:
    runtime, published = reference
    ours = speedup_table(runtime)
    assert list(ours.index) == list(published.index) and list(ours.columns) == list(published.columns)
    # published values have two decimals: ours, rounded the same way, must equal them exactly
    np.testing.assert_array_equal(ours.to_numpy().round(2), published.to_numpy())
    # the full-precision values sit within half a unit of the last published digit
    assert np.abs(ours.to_numpy() - published.to_numpy()).max() <= 0.005 + 1e-12


def test_published_average_cannot_tell_rounded_from_unrounded_mean(reference) -> None:
    """The finding behind the average row: the published digits fit both readings.

    We keep the mean of the unrounded speed-ups (rounding only on writing); the mean of the
    rounded speed-ups gives the same two decimals in every column of the published table
    (e.g. 8 cores: 1.97276 vs 1.974, both 1.97), so the table cannot tell which was used.
    """
    runtime, published = reference
    ours = speedup_table(runtime)
    size_rows = ours.drop(index=AVERAGE)
    mean_of_unrounded = size_rows.mean().round(2)
    mean_of_rounded = size_rows.round(2).mean().round(2)
    np.testing.assert_array_equal(mean_of_unrounded.to_numpy(), published.loc[AVERAGE].to_numpy())
    np.testing.assert_array_equal(mean_of_rounded.to_numpy(), published.loc[AVERAGE].to_numpy())
    assert (size_rows.mean() != size_rows.round(2).mean()).any()  # the readings do differ before rounding


# --------------------------------------------------------------------------- whole grid, files


def test_complete_grid_writes_every_named_file(tmp_path: Path) -> None:
    write_grid(tmp_path)
    out = tmp_path / paths.tables_dir(DATASET)
    written = aggregate(GRID, out, workdir=tmp_path)
    assert sorted(p.name for p in written) == sorted(table_filenames(["bigdl"], ["strong"]))
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    assert pd.read_csv(out / MISSING_CSV).empty  # header only
    assert list(pd.read_csv(out / MISSING_CSV).columns)[-1] == "path"


def test_written_csvs_are_seed_shaped_with_two_decimals(tmp_path: Path) -> None:
    write_grid(tmp_path)
    aggregate(GRID, tmp_path / "t", workdir=tmp_path)
    lines = (tmp_path / "t" / "speedup_train_bigdl_strong.csv").read_text().splitlines()
    assert lines[0] == "size,cores_1,cores_2,cores_4"
    assert lines[1] == f"100,1.00,2.00,{11 / 4:.2f}"
    assert lines[-1] == f"average,1.00,2.00,{(11 / 4 + 21 / 7.25) / 2:.2f}"
    runtime_lines = (tmp_path / "t" / "runtime_total_bigdl_strong.csv").read_text().splitlines()
    assert runtime_lines[2] == f"200,{21 + OVERHEAD_S:.2f},{10.5 + OVERHEAD_S:.2f},{7.25 + OVERHEAD_S:.2f}"
    std_lines = (tmp_path / "t" / "runtime_total_bigdl_strong_std.csv").read_text().splitlines()
    assert std_lines[1] == f"100,{statistics.stdev([10, 12]):.2f},{statistics.stdev([6, 5]):.2f},0.00"


def test_markdown_tables_shape_and_heading(tmp_path: Path) -> None:
    write_grid(tmp_path)
    aggregate(GRID, tmp_path / "t", workdir=tmp_path)
    runtime_md = (tmp_path / "t" / "runtime_train_bigdl_strong.md").read_text().splitlines()
    heading = runtime_md[0]
    assert heading.startswith("### Runtime (s)")
    for word in (DATASET, "bigdl", "strong scaling", "train phase", "mean ± sample std", "2 repetitions"):
        assert word in heading
    table = [line for line in runtime_md if line.startswith("|")]
    assert table[0] == "| size | 1 core | 2 cores | 4 cores |"
    assert table[1] == "|---:|---:|---:|---:|"
    assert (
        table[2]
        == f"| 100 | 11.00 ± {statistics.stdev([10, 12]):.2f} | 5.50 ± {statistics.stdev([6, 5]):.2f} | 4.00 ± 0.00 |"
    )
    assert len(table) == 2 + 2  # header, separator, two sizes

    speedup_md = (tmp_path / "t" / "speedup_total_bigdl_strong.md").read_text().splitlines()
    rows = [line for line in speedup_md if line.startswith("|")]
    assert len(rows) == 2 + 2 + 1 and rows[-1].startswith(f"| **{AVERAGE}** |")
    assert "speed-up = T(1 core) / T(N cores)" in "\n".join(speedup_md)


def test_missing_cells_raise_one_error_listing_paths_and_fix(tmp_path: Path) -> None:
    write_grid(tmp_path, skip={(200, 4, 1), (100, 2, 2)})
    out = tmp_path / "t"
    with pytest.raises(MissingCellsError) as err:
        aggregate(GRID, out, workdir=tmp_path)
    message = str(err.value)
    for size, cores, rep in ((200, 4, 1), (100, 2, 2)):
        assert paths.cell_dir(DATASET, "bigdl", "strong", size, cores, rep) + "/metrics.json" in message
    assert "2 of 12 cells" in message and "rerun the workflow" in message and "aggregate.allow_partial: true" in message
    assert len(pd.read_csv(out / MISSING_CSV)) == 2  # the listing is written even on error
    assert not (out / "runtime_train_bigdl_strong.csv").exists()


def test_partial_grid_marks_missing_cells(tmp_path: Path) -> None:
    # (200, 4) has no repetition at all; (100, 2) has one of two
    write_grid(tmp_path, skip={(200, 4, 1), (200, 4, 2), (100, 2, 2)})
    out = tmp_path / "t"
    aggregate(GRID, out, workdir=tmp_path, allow_partial=True)

    missing = pd.read_csv(out / MISSING_CSV)
    assert sorted(zip(missing["size"], missing["cores"], missing["repetition"])) == [
        (100, 2, 2),
        (200, 4, 1),
        (200, 4, 2),
    ]

    runtime = pd.read_csv(out / "runtime_train_bigdl_strong.csv", index_col="size")
    assert math.isnan(runtime.loc[200, "cores_4"]) and runtime.loc[100, "cores_2"] == 6.0
    speedup = pd.read_csv(out / "speedup_train_bigdl_strong.csv", index_col="size")
    assert math.isnan(speedup.loc["200", "cores_4"]) and math.isnan(speedup.loc[AVERAGE, "cores_4"])
    assert speedup.loc[AVERAGE, "cores_2"] == round((11 / 6 + 21 / 10.5) / 2, 2)

    md = (out / "runtime_train_bigdl_strong.md").read_text()
    assert "| 200 | 21.00 ± 1.41 | 10.50 ± 2.12 | missing |" in md
    assert "6.00 (1 of 2 reps)" in md
    assert "| **average** | 1.00 | " in (out / "speedup_train_bigdl_strong.md").read_text()
    assert "missing |" in (out / "efficiency_total_bigdl_strong.md").read_text()


def test_explicit_input_list_is_checked_against_the_grid(tmp_path: Path) -> None:
    every = write_grid(tmp_path)
    given = [p for p in every if "/c4/" not in p.as_posix()]  # a rule input without the 4-core cells
    with pytest.raises(MissingCellsError, match="4 of 12 cells"):
        aggregate(GRID, tmp_path / "t", given, workdir=tmp_path)


def test_cells_outside_the_grid_are_left_out(tmp_path: Path) -> None:
    every = write_grid(tmp_path)
    smaller = Grid.from_params(DATASET, "bigdl", "strong", [100], [1, 2], 2)
    aggregate(smaller, tmp_path / "t", every, workdir=tmp_path)
    cells = read_cells_csv(tmp_path / "t" / CELLS_CSV)
    assert len(cells) == 4 and set(cells["size"]) == {100}
    assert (tmp_path / "t" / "runtime_train_bigdl_strong.csv").read_text().splitlines()[0] == "size,cores_1,cores_2"


def test_two_files_for_one_cell_are_refused(tmp_path: Path) -> None:
    first = write_metrics(tmp_path / "a", metrics_doc(100, 1, 1, 5.0))
    second = write_metrics(tmp_path / "b", metrics_doc(100, 1, 1, 6.0))
    with pytest.raises(MetricsError, match="Several metrics files describe the same cell"):
        load_metrics([first, second])
