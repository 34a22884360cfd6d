"""The USL fit: exact recovery from synthetic curves, the published table's fit, the files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dlscale import scaling

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "workflow" / "resources" / "published"
CORES = [1, 2, 4, 8, 16, 32]


@pytest.mark.parametrize("sigma, kappa", [(0.05, 0.002), (0.4, 0.0044), (0.0, 0.01), (0.9, 0.0)])
def test_fit_recovers_sigma_and_kappa_of_exact_usl_data(sigma: float, kappa: float) -> None:
    fit = scaling.fit_usl(CORES, scaling.usl_speedup(CORES, sigma, kappa))
    assert fit is not None and fit.warning is None
    assert fit.sigma == pytest.approx(sigma, abs=1e-7)
    assert fit.kappa == pytest.approx(kappa, abs=1e-9)
    assert fit.max_abs_residual < 1e-8
    if kappa > 0:
        assert fit.peak_cores == pytest.approx(math.sqrt((1 - sigma) / kappa), rel=1e-5)
        assert fit.peak_speedup == pytest.approx(scaling.usl_speedup(fit.peak_cores, sigma, kappa), rel=1e-6)


def test_amdahl_curve_has_no_peak_and_tends_to_one_over_sigma() -> None:
    fit = scaling.fit_usl(CORES, scaling.usl_speedup(CORES, 0.25, 0.0))
    assert fit.kappa == pytest.approx(0.0, abs=1e-10)
    assert math.isinf(fit.peak_cores)
    assert fit.peak_speedup == pytest.approx(4.0, rel=1e-5)


def test_fit_relative_to_a_base_other_than_one_core() -> None:
    cores = [2, 4, 8, 16]
    curve = scaling.usl_speedup(cores, 0.1, 0.003)
    fit = scaling.fit_usl(cores, curve / curve[0])
    assert fit.base_cores == 2
    assert (fit.sigma, fit.kappa) == (pytest.approx(0.1, abs=1e-7), pytest.approx(0.003, abs=1e-9))
    assert fit.predict([2])[0] == pytest.approx(1.0)


def test_two_core_counts_fit_with_a_plain_warning_and_missing_points_are_skipped() -> None:
    fit = scaling.fit_usl([1, 2, 4], [1.0, 1.5, float("nan")])
    assert fit.cores == (1, 2)
    assert fit.warning == scaling.FEW_POINTS_WARNING
    # one speed-up determines one parameter: Amdahl's sigma, 2 / 1.5 - 1
    assert (fit.sigma, fit.kappa) == (pytest.approx(1 / 3, abs=1e-9), 0.0)
    assert scaling.fit_usl([1, 2], [1.0, float("nan")]) is None


def published_fit() -> pd.DataFrame:
    table = scaling.published_fit(REFERENCE_DIR)
    assert table is not None, f"published runtime table missing from {REFERENCE_DIR}"
    return table


def test_published_table_fit_is_within_sensible_bounds() -> None:
    table = published_fit()
    assert list(table.index) == [1000, 5000, 10000, 30000, 60000, "average"]
    sizes = table.drop(index="average")
    # a serial share of a third to two thirds, a small coherency term...
    assert sizes["sigma"].between(0.25, 0.7).all(), sizes["sigma"]
    assert sizes["kappa"].between(0.001, 0.01).all(), sizes["kappa"]
    # ...whose peak lies where the published speed-ups peak (8 or 16 cores) and rises with size
    assert sizes["peak_cores"].between(6, 16).all(), sizes["peak_cores"]
    assert sizes["peak_cores"].is_monotonic_increasing
    assert sizes["sigma"].is_monotonic_decreasing
    assert (sizes["rms_residual"] < 0.06).all()
    published_peak = {1000: 1.43, 5000: 1.87, 10000: 2.04, 30000: 2.22, 60000: 2.35}
    for size, best in published_peak.items():
        assert table.loc[size, "peak_speedup"] == pytest.approx(best, abs=0.06)


def _usl_cells(sigma: float, kappa: float, cores=(1, 2, 4), sizes=(1000, 5000)) -> pd.DataFrame:
    rows = []
    for size in sizes:
        for n in cores:
            seconds = size / 100 / scaling.usl_speedup(n, sigma, kappa)
            rows.append(dict(backend="bigdl", scaling="strong", size=size, cores=n, repetition=1,
                             t_total=float(seconds) + 5.0, t_train=float(seconds)))
    return pd.DataFrame(rows)


def test_write_models_puts_ours_beside_the_published_fit(tmp_path: Path) -> None:
    cells = _usl_cells(0.2, 0.01, cores=(1, 2, 4, 8))
    written = scaling.write_models(cells, tmp_path, "fashion-mnist", [("bigdl", "strong")], ("total", "train"),
                                   reference_dir=REFERENCE_DIR)
    names = sorted(p.name for p in written)
    assert names == sorted(scaling.model_filenames(["bigdl"], ["strong"], ["total", "train"]))
    table = pd.read_csv(tmp_path / "scaling_model_train_bigdl_strong.csv", index_col="size")
    assert table.loc["1000", "ours_sigma"] == pytest.approx(0.2, abs=1e-4)
    assert table.loc["1000", "ours_kappa"] == pytest.approx(0.01, abs=1e-5)
    assert table.loc["60000", "published_sigma"] == pytest.approx(published_fit().loc[60000, "sigma"], rel=1e-4)
    assert np.isnan(table.loc["60000", "ours_sigma"])  # a size only the published grid has
    text = (tmp_path / "scaling_model_train_bigdl_strong.md").read_text()
    assert "dataset fashion-mnist" in text and "σ published" in text and "| **average** |" in text


def test_two_core_grid_warns_in_the_markdown(tmp_path: Path) -> None:
    cells = _usl_cells(0.3, 0.0, cores=(1, 2))
    scaling.write_models(cells, tmp_path, "demo", [("bigdl", "strong")], ("train",))
    text = (tmp_path / "scaling_model_train_bigdl_strong.md").read_text()
    assert f"ours: {scaling.FEW_POINTS_WARNING}" in text


# The published fit as README.md quotes it (sigma, kappa, N*, S(N*)), to the digits it shows.
README_PUBLISHED_FIT = {
    1000: (0.604, 0.00657, 7.8, 1.43),
    5000: (0.430, 0.00490, 10.8, 1.88),
    10000: (0.388, 0.00420, 12.1, 2.06),
    30000: (0.339, 0.00442, 12.2, 2.26),
    60000: (0.322, 0.00365, 13.6, 2.39),
    "average": (0.403, 0.00437, 11.7, 2.00),
}


def test_published_fit_matches_the_numbers_readme_quotes() -> None:
    table = published_fit()
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for size, (sigma, kappa, peak, best) in README_PUBLISHED_FIT.items():
        row = table.loc[size]
        assert (round(row["sigma"], 3), round(row["kappa"], 5)) == (sigma, kappa), size
        assert (round(row["peak_cores"], 1), round(row["peak_speedup"], 2)) == (peak, best), size
        label = f"{size:,}" if isinstance(size, int) else size
        assert f"| {label} | {sigma:.3f} | {kappa:.5f} | {peak:.1f} | {best:.2f} |" in readme, size
