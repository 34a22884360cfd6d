"""Figures of the scaling study, drawn from the long ``cells.csv`` table.

Each figure file holds every (backend, scaling) group: one row of panels per group, one
column per phase (``paths.PHASES``), so the file names stay fixed (``paths.FIGURES``).
Figures are built on ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot), so
nothing depends on a display or on pyplot's global state.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from dlscale import paths, scaling
from dlscale.grid import GROUP_KEYS, Grid
from dlscale.tables import AVERAGE, condition_warnings, core_counts, group_tables, load_reference

log = logging.getLogger(__name__)

DPI = 120
PANEL_INCHES = (5.6, 4.0)
PUBLISHED_LABEL = "published (Xeon E5-2680 v3, MNIST)"
UNKNOWN_HOST = "unknown host"
USL_LABEL = "USL fit (dashed; scaling_model_*.md)"
PHASE_STYLES = {"train": "-", "total": "--"}  # in the comparison figure
NOTE_STYLE = {
    "fontsize": "small",
    "style": "italic",
    "color": "0.25",
    "bbox": {"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"},
}

Group = tuple[str, str]


# --------------------------------------------------------------------------- shared pieces


def _groups(cells: pd.DataFrame, grid: Grid | None) -> list[Group]:
    if grid is not None:
        return grid.groups()
    return sorted(set(cells[list(GROUP_KEYS)].itertuples(index=False, name=None))) if len(cells) else []


def _group_cells(cells: pd.DataFrame, group: Group) -> pd.DataFrame:
    if cells.empty:
        return cells
    backend, scaling = group
    return cells[(cells["backend"] == backend) & (cells["scaling"] == scaling)]


def _axis_values(grid: Grid | None) -> tuple[list[int] | None, list[int] | None]:
    """The grid's sizes and cores, so missing cells leave gaps instead of vanishing."""
    return (list(grid.sizes), list(grid.cores)) if grid is not None else (None, None)


def _log2_cores_axis(ax: Axes, cores: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(cores), [str(c) for c in cores])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(min(cores) / 1.25, max(cores) * 1.25)
    ax.set_xlabel("cores (log₂ scale)")
    ax.grid(True, which="major", alpha=0.3)


def _size_colors(n: int) -> np.ndarray:
    return matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, max(n, 1)))


def _note(ax: Axes, text: str, y: float = 0.04) -> None:
    """A remark inside the panel; kept out of the layout so a long one cannot squash the axes."""
    note = ax.text(
        0.02,
        y,
        textwrap.fill(text, 70, break_long_words=False, break_on_hyphens=False),
        transform=ax.transAxes,
        ha="left",
        va="bottom",
        **NOTE_STYLE,
    )
    note.set_in_layout(False)


def _notes_below(ax: Axes, notes: Sequence[str]) -> None:
    """Remarks under the x label, inside the layout, so they never cover a line."""
    text = "\n".join(textwrap.fill(f"• {n}", 95, break_long_words=False, break_on_hyphens=False) for n in notes)
    ax.annotate(
        text,
        xy=(0.0, 0.0),
        xycoords=("axes fraction", ax.xaxis.label),
        xytext=(0, -6),
        textcoords="offset points",
        ha="left",
        va="top",
        fontsize="small",
        style="italic",
        color="0.25",
    )


def host_label(cells: pd.DataFrame) -> str:
    """The host(s) the cells ran on, short enough for a legend."""
    hosts = sorted(cells["hostnames"].dropna().astype(str).unique()) if "hostnames" in cells.columns else []
    if not hosts:
        return UNKNOWN_HOST
    return hosts[0] if len(hosts) == 1 else f"{hosts[0]} +{len(hosts) - 1} more"


def _new_figure(
    n_rows: int, n_cols: int, panel_inches: tuple[float, float] = PANEL_INCHES
) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel_inches[0] * n_cols, panel_inches[1] * n_rows + 0.6), layout="constrained")
    return fig, fig.subplots(n_rows, n_cols, squeeze=False)


# --------------------------------------------------------------------------- per-size figures

# (axes, the group's cells, phase, grid sizes or None, grid cores or None)
PanelDrawer = Callable[[Axes, pd.DataFrame, str, list[int] | None, list[int] | None], None]


def _per_size_figure(cells: pd.DataFrame, dataset: str, grid: Grid | None, title: str, draw: PanelDrawer) -> Figure:
    """Panels of (group x phase), each drawn by ``draw``; a placeholder when nothing ran."""
    groups = _groups(cells, grid)
    sizes, cores = _axis_values(grid)
    fig, axes = _new_figure(max(len(groups), 1), len(paths.PHASES))
    warning = (
        "\nwarning: some cells were oversubscribed, undersubscribed or not alone on their node (see the tables)"
        if condition_warnings(cells)
        else ""
    )
    host = host_label(cells)
    on_host = "" if host == UNKNOWN_HOST else f", host {host}"
    fig.suptitle(f"{title} — dataset {dataset}{on_host}{warning}")
    if not groups:
        for ax in axes.flat:
            _note(ax, "no finished cells yet", y=0.5)
        return fig
    for row, group in enumerate(groups):
        for col, phase in enumerate(paths.PHASES):
            ax = axes[row][col]
            ax.set_title(f"{group[0]}, {group[1]} scaling — {phase} phase")
            draw(ax, _group_cells(cells, group), phase, sizes, cores)
    return fig


def _plot_size_lines(ax: Axes, table: pd.DataFrame, errors: pd.DataFrame | None = None) -> bool:
    """One line per size row of a seed-shaped table; False when the table has no value."""
    rows = table.drop(index=AVERAGE, errors="ignore")
    cores = core_counts(rows)
    _log2_cores_axis(ax, cores)
    if rows.isna().all().all():
        _note(ax, "no finished cells for this panel", y=0.5)
        return False
    for color, (size, values) in zip(_size_colors(len(rows)), rows.iterrows()):
        yerr = None if errors is None else errors.loc[size].fillna(0).to_numpy()
        ax.errorbar(
            cores, values.to_numpy(), yerr=yerr, color=color, marker="o", capsize=3, label=f"{int(size):,} records"
        )
    if rows.isna().any().any():
        _note(ax, "gaps: missing cells (see missing_cells.csv)")
    ax.legend(title="training set", fontsize="small", title_fontsize="small")
    return True


def _draw_runtime(ax: Axes, cells: pd.DataFrame, phase: str, sizes, cores) -> None:
    tables = group_tables(cells, phase, sizes, cores)
    if _plot_size_lines(ax, tables.mean, errors=tables.std):
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2x10^1
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_ylabel("runtime (s, log scale), mean ± std")


def _ideal_speedup(ax: Axes, cores: Sequence[int], data_max: float) -> None:
    """y = N / base, clipped so a far-off ideal does not flatten the measured lines."""
    base = min(cores)
    ideal = np.array(cores) / base
    ax.plot(cores, ideal, color="0.5", linestyle=":", linewidth=1.5, label=f"ideal (N / {base})")
    top = max(data_max * 1.15, min(ideal.max(), max(2 * data_max, 2.0)) * 1.05)
    ax.set_ylim(0, top)


def _draw_speedup(ax: Axes, cells: pd.DataFrame, phase: str, sizes, cores) -> None:
    speedup = group_tables(cells, phase, sizes, cores).speedup
    if _plot_size_lines(ax, speedup):
        _ideal_speedup(ax, core_counts(speedup), float(np.nanmax(speedup.to_numpy())))
        _usl_curves(ax, speedup)
        ax.legend(title="training set", fontsize="small", title_fontsize="small")
    base = min(core_counts(speedup)) if len(speedup.columns) else 1
    ax.set_ylabel(f"speed-up vs {base} core{'s' if base > 1 else ''} (×)")


def _usl_curves(ax: Axes, speedup: pd.DataFrame) -> None:
    """The fitted USL curve of each size (dashed, in the size's colour), over the measured
    points; sizes with fewer than two speed-ups have no fit (dlscale.scaling)."""
    rows = speedup.drop(index=AVERAGE, errors="ignore")
    cores = core_counts(rows)
    smooth = np.geomspace(min(cores), max(cores), 64)
    fits = scaling.fits_by_row(rows)
    label = USL_LABEL  # one legend entry for all the curves
    for color, size in zip(_size_colors(len(rows)), rows.index):
        if size in fits:
            ax.plot(smooth, fits[size].predict(smooth), color=color, linestyle="--", linewidth=1, alpha=0.8, label=label)
            label = None


def _draw_efficiency(ax: Axes, cells: pd.DataFrame, phase: str, sizes, cores) -> None:
    efficiency = group_tables(cells, phase, sizes, cores).efficiency
    if _plot_size_lines(ax, efficiency):
        ax.axhline(1.0, color="0.5", linestyle=":", linewidth=1.5, label="ideal (1)")
        ax.set_ylim(0, max(1.1, float(np.nanmax(efficiency.to_numpy())) * 1.1))
        ax.legend(title="training set", fontsize="small", title_fontsize="small")
    base = min(core_counts(efficiency)) if len(efficiency.columns) else 1
    ax.set_ylabel("parallel efficiency, speed-up / N" if base == 1 else f"parallel efficiency, speed-up / (N / {base})")


def figure_runtime(cells: pd.DataFrame, dataset: str, grid: Grid | None = None) -> Figure:
    """Mean runtime (error bars: std over repetitions) vs cores, one line per size."""
    return _per_size_figure(cells, dataset, grid, "Runtime vs cores", _draw_runtime)


def figure_speedup(cells: pd.DataFrame, dataset: str, grid: Grid | None = None) -> Figure:
    """Speed-up vs cores, one line per size, with the ideal line y = N / base."""
    return _per_size_figure(cells, dataset, grid, "Speed-up vs cores", _draw_speedup)


def figure_efficiency(cells: pd.DataFrame, dataset: str, grid: Grid | None = None) -> Figure:
    """Parallel efficiency vs cores, one line per size, with the ideal line y = 1."""
    return _per_size_figure(cells, dataset, grid, "Parallel efficiency vs cores", _draw_efficiency)


# --------------------------------------------------------------------------- published vs ours


def figure_published_vs_ours(
    cells: pd.DataFrame, dataset: str, reference_dir: str | Path | None = None, grid: Grid | None = None
) -> Figure:
    """Average speed-up (over sizes) vs cores: the published table against our train and
    total phases, for each strong-scaling group (the published runs kept the batch fixed)."""
    fig, axes = _new_figure(1, 1, panel_inches=(8.0, 5.0))
    ax = axes[0][0]
    fig.suptitle(f"Average speed-up, published vs ours — dataset {dataset}")
    notes, all_cores, y_max = [], set(), 0.0

    reference = load_reference(reference_dir)
    if reference is None:
        where = f"not found in {reference_dir}" if reference_dir else "not given"
        notes.append(f"published table {where}: only ours shown")
    else:
        published = reference[1].loc[AVERAGE]
        pub_cores = core_counts(published.to_frame().T)
        ax.plot(pub_cores, published.to_numpy(), color="black", marker="s", linewidth=2, label=PUBLISHED_LABEL)
        fit = scaling.fit_usl(pub_cores, published.to_numpy())
        smooth = np.geomspace(min(pub_cores), max(pub_cores), 64)
        label = f"published, USL fit (σ {fit.sigma:.2f}, κ {fit.kappa:.4f}, N* {fit.peak_cores:.0f})"
        ax.plot(smooth, fit.predict(smooth), color="black", linestyle="--", linewidth=1, label=label)
        all_cores.update(pub_cores)
        y_max = max(y_max, float(published.max()))

    groups = _groups(cells, grid)
    strong = [g for g in groups if g[1] == "strong"]
    if len(strong) < len(groups):
        notes.append("weak-scaling groups not shown: the published runs kept the global batch fixed (strong scaling)")
    sizes, cores = _axis_values(grid)
    colors = matplotlib.colormaps["tab10"].colors
    for index, group in enumerate(strong):
        group_cells = _group_cells(cells, group)
        host = host_label(group_cells)
        for phase in paths.PHASES:
            average = group_tables(group_cells, phase, sizes, cores).speedup.loc[AVERAGE]
            our_cores = core_counts(average.to_frame().T)
            all_cores.update(our_cores)
            backend = f", {group[0]}" if len(strong) > 1 else ""
            base = f", vs {min(our_cores)} cores" if our_cores and min(our_cores) != 1 else ""
            ax.plot(
                our_cores,
                average.to_numpy(),
                color=colors[index % len(colors)],
                linestyle=PHASE_STYLES.get(phase, ":"),
                marker="o",
                label=f"ours ({dataset}, {host}{backend}{base}) — {phase} phase",
            )
            if average.notna().any():
                y_max = max(y_max, float(average.max()))
            gaps = [c for c, value in zip(our_cores, average) if pd.isna(value)]
            if gaps:
                at = ", ".join(str(c) for c in gaps)
                notes.append(f"ours, {phase} phase: no complete average yet at {at} cores (a size is missing)")

    if not strong:
        notes.append("no strong-scaling cells to compare")
    if all_cores:
        cores_sorted = sorted(all_cores)
        _log2_cores_axis(ax, cores_sorted)
        _ideal_speedup(ax, cores_sorted, max(y_max, 1.0))
    ax.set_ylabel("average speed-up over sizes (×)")
    if notes:
        _notes_below(ax, notes)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="upper left")
    return fig


# --------------------------------------------------------------------------- all figures


def plot_all(
    cells: pd.DataFrame,
    out_dir: str | Path,
    dataset: str,
    *,
    grid: Grid | None = None,
    reference_dir: str | Path | None = None,
) -> list[Path]:
    """Write ``<out_dir>/<name>.png`` for every name of ``paths.FIGURES``; return the paths."""
    builders: dict[str, Callable[[], Figure]] = {
        "runtime": lambda: figure_runtime(cells, dataset, grid),
        "speedup": lambda: figure_speedup(cells, dataset, grid),
        "efficiency": lambda: figure_efficiency(cells, dataset, grid),
        "published_vs_ours": lambda: figure_published_vs_ours(cells, dataset, reference_dir, grid),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in paths.FIGURES:
        path = out_dir / f"{name}.png"
        builders[name]().savefig(path, dpi=DPI)
        log.info("wrote %s", path)
        written.append(path)
    return written
