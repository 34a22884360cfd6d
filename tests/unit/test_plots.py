"""Figures: fixed file names, readable PNGs, with and without the published tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from dlscale import paths
from dlscale.grid import Grid
from dlscale.metrics import load_metrics
from dlscale.plots import PUBLISHED_LABEL, USL_LABEL, figure_published_vs_ours, figure_speedup, plot_all
from synthetic_cells import DATASET, GRID, REFERENCE_DIR, published_tables, write_grid


def _texts(fig) -> str:
    """Every string drawn in a figure (titles, labels, legend entries, notes), unwrapped."""
    texts = (t.get_text() for t in fig.findobj(match=lambda a: hasattr(a, "get_text")))
    return "\n".join(" ".join(text.split()) for text in texts)


def _assert_readable_png(path: Path, min_width: int = 600, min_height: int = 400) -> None:
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (path, image.shape)
    assert width <= 4000 and height <= 4000, (path, image.shape)
    assert float(np.std(image[..., :3])) > 0.01, f"{path} looks blank"


@pytest.fixture
def cells(tmp_path: Path) -> pd.DataFrame:
    return load_metrics(write_grid(tmp_path))


def test_plot_all_writes_every_figure_with_reference(tmp_path: Path, cells: pd.DataFrame) -> None:
    published_tables()  # fails when the repository's published tables are missing
    out = tmp_path / paths.figures_dir(DATASET)
    written = plot_all(cells, out, DATASET, grid=GRID, reference_dir=REFERENCE_DIR)
    assert [p.name for p in written] == [f"{name}.png" for name in paths.FIGURES]
    for path in written:
        _assert_readable_png(path)


def test_published_vs_ours_labels_both_sources(cells: pd.DataFrame) -> None:
    published_tables()  # fails when the repository's published tables are missing
    fig = figure_published_vs_ours(cells, DATASET, REFERENCE_DIR, GRID)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert PUBLISHED_LABEL in labels
    assert f"ours ({DATASET}, node01) — train phase" in labels
    assert f"ours ({DATASET}, node01) — total phase" in labels
    published = next(line for line in fig.axes[0].get_lines() if line.get_label() == PUBLISHED_LABEL)
    assert list(published.get_xdata()) == [1, 2, 4, 8, 16, 32]
    assert published.get_ydata()[3] == pytest.approx(1.97)  # the published 8-core average
    # its USL fit beside it (the published average row as printed, two decimals)
    assert "published, USL fit (σ 0.40, κ 0.0044, N* 12)" in labels
    assert "dataset fashion-mnist" in _texts(fig)


def test_without_reference_the_figure_says_so(tmp_path: Path, cells: pd.DataFrame) -> None:
    absent = tmp_path / "no-reference"
    fig = figure_published_vs_ours(cells, DATASET, absent, GRID)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert PUBLISHED_LABEL not in labels and any(label.startswith("ours (") for label in labels)
    assert f"published table not found in {absent}" in _texts(fig)

    fig.savefig(tmp_path / "published_vs_ours.png")
    _assert_readable_png(tmp_path / "published_vs_ours.png")


def test_speedup_figure_has_one_line_per_size_and_the_ideal(cells: pd.DataFrame) -> None:
    fig = figure_speedup(cells, DATASET, GRID)
    assert len(fig.axes) == len(paths.PHASES)  # one group: one row of phase panels
    ax = fig.axes[0]
    assert sorted(ax.get_legend_handles_labels()[1]) == [
        "100 records", "200 records", USL_LABEL, "ideal (N / 1)"
    ]
    ideal = next(line for line in ax.get_lines() if line.get_label() == "ideal (N / 1)")
    assert list(ideal.get_ydata()) == [1, 2, 4]
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [1, 2, 4]
    assert "cores" in ax.get_xlabel() and "speed-up" in ax.get_ylabel()


def test_speedup_figure_draws_the_fitted_usl_curve_of_each_size(cells: pd.DataFrame) -> None:
    fig = figure_speedup(cells, DATASET, GRID)
    ax = fig.axes[0]
    curves = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(curves) == len(GRID.sizes)  # one per size, each through its measured points
    measured = [line for line in ax.get_lines() if line.get_label().endswith(" records")]
    for curve, points in zip(curves, measured):
        assert curve.get_color() == points.get_color()
        assert curve.get_ydata()[0] == pytest.approx(1.0)  # relative to the 1-core point
        assert curve.get_xdata()[0] == 1 and curve.get_xdata()[-1] == pytest.approx(4)


def test_partial_and_multi_group_grids_still_plot(tmp_path: Path) -> None:
    both = write_grid(tmp_path, skip={(200, 4, 1), (200, 4, 2)}) + write_grid(tmp_path, scaling="weak")
    grid = Grid.from_params(DATASET, "bigdl", ["strong", "weak"], GRID.sizes, GRID.cores, 2)
    cells = load_metrics(both)
    fig = figure_speedup(cells, DATASET, grid)
    assert len(fig.axes) == 2 * len(paths.PHASES)
    text = _texts(fig)
    assert "gaps: missing cells" in text and "bigdl, weak scaling — train phase" in text
    fig.savefig(tmp_path / "speedup.png")
    _assert_readable_png(tmp_path / "speedup.png", min_height=600)

    comparison = figure_published_vs_ours(cells, DATASET, None, grid)
    labels = [line.get_label() for line in comparison.axes[0].get_lines()]
    assert not any("weak" in label for label in labels)
    assert "weak-scaling groups not shown" in _texts(comparison)
    assert "no complete average yet" in _texts(comparison)  # the 4-core column lacks size 200


def test_no_finished_cell_yet_gives_placeholder_panels() -> None:
    empty = load_metrics([])
    fig = figure_speedup(empty, DATASET, GRID)
    assert len(fig.axes) == len(paths.PHASES)
    assert _texts(fig).count("no finished cells for this panel") == len(paths.PHASES)
    assert not any(ax.get_lines() for ax in fig.axes)
