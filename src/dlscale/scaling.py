"""A scaling model for every speed-up curve: the Universal Scalability Law (USL).

    S(N) = N / (1 + sigma (N - 1) + kappa N (N - 1))

sigma is contention (the serial share: Amdahl's law is the kappa = 0 case), kappa is
coherency (cross-talk between workers, which makes a curve peak and fall). The peak is at
N* = sqrt((1 - sigma) / kappa); with kappa = 0 the curve never falls and N* is infinite.

Speed-ups are relative to the smallest core count of a curve (``base``; 1 in the published
grid), so the model is fitted as S(N) / S(base). The fit is scipy's bounded least squares
(sigma in [0, 1], kappa >= 0). A curve of fewer than three core counts gets a fit and a
plain warning: two parameters through two points always fit, and mean nothing.

The fits take plain data (arrays, seed-shaped DataFrames: index ``size``, columns
``cores_N``); the tables come from dlscale.tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from dlscale.tables import AVERAGE, REFERENCE_RUNTIME_CSV, core_counts, group_tables, speedup_table

MIN_POINTS = 3
SIGMA_BOUNDS = (0.0, 1.0)
KAPPA_BOUNDS = (0.0, 10.0)  # kappa 10 already halves the speed-up at 2 cores: nothing real is beyond
# Least squares stops short of the bound kappa = 0 by ~1e-9 on an Amdahl curve (its N* then
# reads tens of thousands of cores): below this, kappa is 0 and the curve has no peak.
KAPPA_ZERO = 1e-8
FEW_POINTS_WARNING = "fewer than 3 core counts: only Amdahl's law (κ = 0) fitted, no peak can be predicted"
# Columns of a fit table, in order (ScalingFit.as_row).
FIT_COLUMNS = ("sigma", "kappa", "peak_cores", "peak_speedup", "rms_residual", "max_abs_residual", "points", "warning")


def usl_speedup(cores: Sequence[float] | np.ndarray | float, sigma: float, kappa: float) -> np.ndarray:
    """S(N) of the USL relative to one core."""
    n = np.asarray(cores, dtype=float)
    return n / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0))


def peak_cores(sigma: float, kappa: float) -> float:
    """N* = sqrt((1 - sigma) / kappa): infinite when kappa is 0 (Amdahl: no peak)."""
    if kappa <= 0.0:
        return math.inf
    return math.sqrt(max(1.0 - sigma, 0.0) / kappa)


@dataclass(frozen=True)
class ScalingFit:
    """The USL fitted to one speed-up curve (speed-ups relative to ``base_cores``)."""

    sigma: float
    kappa: float
    base_cores: int
    cores: tuple[int, ...]
    residuals: tuple[float, ...]  # measured - fitted speed-up, per core count
    warning: str | None = None

    @property
    def peak_cores(self) -> float:
        return peak_cores(self.sigma, self.kappa)

    @property
    def peak_speedup(self) -> float:
        """The fitted speed-up at N* (relative to base); the limit 1 / sigma when N* is infinite."""
        if math.isinf(self.peak_cores):
            return math.inf if self.sigma == 0 else float(1.0 / self.sigma / self._base_scale())
        return float(self.predict([self.peak_cores])[0])

    @property
    def rms_residual(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.residuals)))) if self.residuals else math.nan

    @property
    def max_abs_residual(self) -> float:
        return float(np.max(np.abs(self.residuals))) if self.residuals else math.nan

    def _base_scale(self) -> float:
        return float(usl_speedup([self.base_cores], self.sigma, self.kappa)[0])

    def predict(self, cores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Fitted speed-up relative to ``base_cores`` at each core count."""
        return usl_speedup(cores, self.sigma, self.kappa) / self._base_scale()

    def as_row(self) -> dict[str, object]:
        return {
            "sigma": self.sigma,
            "kappa": self.kappa,
            "peak_cores": self.peak_cores,
            "peak_speedup": self.peak_speedup,
            "rms_residual": self.rms_residual,
            "max_abs_residual": self.max_abs_residual,
            "points": len(self.cores),
            "warning": self.warning or "",
        }


def fit_usl(cores: Sequence[int], speedups: Sequence[float]) -> ScalingFit | None:
    """Fit sigma and kappa to measured speed-ups (relative to the smallest core count).

    Core counts whose speed-up is missing (NaN) are left out; None when fewer than two remain
    (nothing to fit). Fewer than ``MIN_POINTS`` gives a fit with a warning.
    """
    pairs = sorted((int(n), float(s)) for n, s in zip(cores, speedups) if s is not None and np.isfinite(s))
    if len(pairs) < 2:
        return None
    n = np.array([p[0] for p in pairs], dtype=float)
    measured = np.array([p[1] for p in pairs])
    base = n[0]

    # Two points (one speed-up beside the base) determine one parameter: sigma and kappa
    # together would fit them in endless ways, so kappa stays 0 (Amdahl) and the fit warns.
    amdahl_only = len(pairs) < MIN_POINTS

    def residuals(params: np.ndarray) -> np.ndarray:
        sigma, kappa = (params[0], 0.0) if amdahl_only else params
        return usl_speedup(n, sigma, kappa) / usl_speedup([base], sigma, kappa)[0] - measured

    lower, upper = [SIGMA_BOUNDS[0], KAPPA_BOUNDS[0]], [SIGMA_BOUNDS[1], KAPPA_BOUNDS[1]]
    width = 1 if amdahl_only else 2
    result = least_squares(
        residuals,
        x0=[0.1, 0.001][:width],
        bounds=(lower[:width], upper[:width]),
        x_scale="jac",  # sigma ~0.1 and kappa ~0.001 differ by orders of magnitude
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    sigma, kappa = (float(result.x[0]), 0.0) if amdahl_only else (float(v) for v in result.x)
    kappa = 0.0 if kappa < KAPPA_ZERO else kappa
    warning = FEW_POINTS_WARNING if amdahl_only else None
    return ScalingFit(
        sigma=sigma,
        kappa=kappa,
        base_cores=int(base),
        cores=tuple(int(v) for v in n),
        residuals=tuple(float(-r) for r in result.fun),
        warning=warning,
    )


def fit_table(speedup: pd.DataFrame) -> pd.DataFrame:
    """One fit per row of a seed-shaped speed-up table (sizes, and ``average`` if present).

    Columns ``FIT_COLUMNS``; a row with fewer than two speed-ups has NaNs and a warning.
    """
    cores = core_counts(speedup)
    rows = {}
    for label, values in speedup.iterrows():
        fit = fit_usl(cores, values[[f"cores_{n}" for n in cores]].to_numpy(dtype=float))
        if fit is None:
            rows[label] = {**{c: math.nan for c in FIT_COLUMNS}, "points": 0, "warning": "no speed-ups to fit"}
        else:
            rows[label] = fit.as_row()
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(FIT_COLUMNS))
    table.index.name = "size"
    return table


def fits_by_row(speedup: pd.DataFrame) -> dict[object, ScalingFit]:
    """The fit of every row that has one (for drawing curves)."""
    cores = core_counts(speedup)
    fits = {}
    for label, values in speedup.iterrows():
        fit = fit_usl(cores, values[[f"cores_{n}" for n in cores]].to_numpy(dtype=float))
        if fit is not None:
            fits[label] = fit
    return fits


def published_fit(reference_dir: str | Path) -> pd.DataFrame | None:
    """The published runtime table fitted as ours are (speed-ups recomputed from runtimes,
    unrounded); the ``average`` row is the fit of the mean speed-up per core count."""
    runtime_csv = Path(reference_dir) / REFERENCE_RUNTIME_CSV
    if not runtime_csv.is_file():
        return None
    return fit_table(speedup_table(pd.read_csv(runtime_csv, index_col="size").astype(float)))


def side_by_side(ours: pd.DataFrame, published: pd.DataFrame | None) -> pd.DataFrame:
    """Our fit's columns prefixed ``ours_``, the published one's ``published_``, joined on size
    (sizes ascending, ``average`` last)."""
    joined = _by_size(ours).add_prefix("ours_")
    if published is not None:
        joined = joined.join(_by_size(published).add_prefix("published_"), how="outer")
    sizes = sorted(i for i in joined.index if i != AVERAGE)
    return joined.loc[sizes + [i for i in joined.index if i == AVERAGE]]


def _by_size(table: pd.DataFrame) -> pd.DataFrame:
    """Sizes as ints (a CSV read gives strings beside ``average``) so two tables join."""
    table = table.copy()
    table.index = pd.Index([AVERAGE if str(i) == AVERAGE else int(i) for i in table.index], name="size", dtype=object)
    return table


# --------------------------------------------------------------------------- from cells, to files


def model_stem(phase: str, backend: str, scaling: str) -> str:
    return f"scaling_model_{phase}_{backend}_{scaling}"


def model_filenames(backends: Sequence[str], scaling_modes: Sequence[str], phases: Sequence[str]) -> list[str]:
    """Every file ``write_models`` writes (for the rule's outputs)."""
    return [
        f"{model_stem(phase, backend, scaling)}.{ext}"
        for backend in backends
        for scaling in scaling_modes
        for phase in phases
        for ext in ("csv", "md")
    ]


def _number(value: object, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞ (no peak)"
    return f"{float(value):.{digits}f}"


def model_markdown(table: pd.DataFrame, heading: str, notes: Sequence[str]) -> str:
    """Ours and (when present) the published fit side by side, one row per size."""
    sources = [s for s in ("ours", "published") if f"{s}_sigma" in table.columns]
    header = ["size"]
    for source in sources:
        header += [f"σ {source}", f"κ {source}", f"N* {source}", f"S(N*) {source}", f"RMS residual {source}"]
    header.append("warning")
    lines = [f"### {heading}", "", *notes, "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---:"] * (len(header) - 1) + ["---"]) + "|")
    for size, row in table.iterrows():
        label = f"**{size}**" if size == AVERAGE else f"{int(size):,}"
        cells = [label]
        for source in sources:
            cells += [
                _number(row[f"{source}_sigma"], 3),
                _number(row[f"{source}_kappa"], 5),
                _number(row[f"{source}_peak_cores"], 1),
                _number(row[f"{source}_peak_speedup"], 2),
                _number(row[f"{source}_rms_residual"], 3),
            ]
        warnings = [str(row[f"{s}_warning"]) for s in sources if isinstance(row.get(f"{s}_warning"), str)]
        cells.append("; ".join(f"{s}: {w}" for s, w in zip(sources, warnings) if w))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


MODEL_NOTES = (
    "Universal Scalability Law S(N) = N / (1 + σ (N − 1) + κ N (N − 1)), fitted by bounded least "
    "squares (scipy) to the speed-ups T(base) / T(N) of each row, base = the smallest core count; "
    "σ: contention (serial share), κ: coherency (cross-talk); κ = 0 is Amdahl's law. "
    "N* = sqrt((1 − σ) / κ) is the predicted peak and S(N*) the speed-up there (∞: no peak). "
    "RMS residual: root mean square of measured − fitted speed-up. `average`: the fit of the "
    "mean speed-up over sizes.",
)
PUBLISHED_NOTE = (
    "published: the published runtime table (MNIST, Xeon E5-2680 v3, strong scaling; phase "
    "not published) fitted the same way."
)


def write_models(
    cells: pd.DataFrame,
    out_dir: str | Path,
    dataset: str,
    groups: Sequence[tuple[str, str]],
    phases: Sequence[str],
    *,
    sizes: Sequence[int] | None = None,
    cores: Sequence[int] | None = None,
    reference_dir: str | Path | None = None,
) -> list[Path]:
    """``scaling_model_<phase>_<backend>_<scaling>.{csv,md}`` for every group and phase."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    published = published_fit(reference_dir) if reference_dir else None
    written = []
    for backend, scaling in groups:
        mask = (cells["backend"] == backend) & (cells["scaling"] == scaling) if len(cells) else []
        group = cells[mask] if len(cells) else cells
        for phase in phases:
            speedup = group_tables(group, phase, sizes, cores).speedup
            table = side_by_side(fit_table(speedup), published)
            stem = out_dir / model_stem(phase, backend, scaling)
            table.to_csv(f"{stem}.csv", index_label="size", float_format="%.6g")
            heading = f"Scaling model (USL), {phase} phase — dataset {dataset}, backend {backend}, {scaling} scaling"
            notes = list(MODEL_NOTES) + ([PUBLISHED_NOTE] if published is not None else [])
            Path(f"{stem}.md").write_text(model_markdown(table, heading, notes), encoding="utf-8")
            written += [Path(f"{stem}.csv"), Path(f"{stem}.md")]
    return written
