"""Runtime, speed-up and efficiency tables, and the warnings about cells that did not measure scaling."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dlscale.aggregate import aggregate
from dlscale.analysis import analysis_filenames
from dlscale.grid import Grid
from dlscale.metrics import load_metrics
from dlscale.paths import table_filenames
from dlscale.tables import AVERAGE, efficiency_table, runtime_table, speedup_table
from synthetic_cells import DATASET, GRID, OVERHEAD_S, TRAIN_S, metrics_doc, published_tables, write_grid, write_metrics


@pytest.fixture
def cells(tmp_path: Path) -> pd.DataFrame:
    return load_metrics(write_grid(tmp_path))


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
    analysis = [name for names in analysis_filenames("bigdl", ["strong", "weak"]).values() for name in names]
    assert sorted(p.name for p in written) == sorted(table_filenames(["bigdl"], ["strong", "weak"]) + analysis)
    weak = pd.read_csv(tmp_path / "t" / "speedup_train_bigdl_weak.csv", index_col="size")
    strong = pd.read_csv(tmp_path / "t" / "speedup_train_bigdl_strong.csv", index_col="size")
    assert weak.loc["200", "cores_4"] == round(21 / (7.25 / 2), 2)
    assert strong.loc["200", "cores_4"] == round(21 / 7.25, 2)
    assert "bigdl, weak scaling" in (tmp_path / "t" / "speedup_train_bigdl_weak.md").read_text()


def test_runtime_table_refuses_mixed_groups(tmp_path: Path) -> None:
    paths_ = write_grid(tmp_path) + write_grid(tmp_path, scaling="weak")
    with pytest.raises(ValueError, match="one \\(dataset, backend, scaling\\) group"):
        runtime_table(load_metrics(paths_), "train")


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
