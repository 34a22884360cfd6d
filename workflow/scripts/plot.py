"""Snakemake script of the plot rule: cells.csv -> figures (logic in dlscale.plots).

params: dataset, reference_dir (folder of the published seed_*.csv; the comparison figure
notes its absence), and optionally sizes, cores, repetitions, backends, scaling_modes (the
grid: missing cells then show as gaps instead of vanishing from the axes).
input: cells (the aggregate rule's cells.csv). output: one PNG per name in paths.FIGURES,
all in one folder. log: one file.
"""

import logging
from pathlib import Path

from dlscale.grid import Grid
from dlscale.metrics import read_cells_csv
from dlscale.plots import plot_all
from dlscale.rule_script import check_declared_outputs, one_folder, run_logged

log = logging.getLogger("dlscale.plots")

GRID_PARAMS = ("backends", "scaling_modes", "sizes", "cores", "repetitions")


def main(smk) -> None:
    params = smk.params
    grid = None
    if all(hasattr(params, name) for name in GRID_PARAMS):
        grid = Grid.from_params(params.dataset, *(getattr(params, name) for name in GRID_PARAMS))
    out_dir = one_folder(smk.output, "plot outputs")
    reference_dir = getattr(params, "reference_dir", None) or None
    if reference_dir is None or not Path(reference_dir).is_dir():
        log.warning("published tables not found (%s): the comparison figure shows ours only", reference_dir)
    cells = read_cells_csv(smk.input.get("cells", smk.input[0]))
    written = plot_all(cells, out_dir, params.dataset, grid=grid, reference_dir=reference_dir)
    check_declared_outputs(smk.output, written, "dlscale.plots")


if __name__ == "__main__":
    run_logged(main, snakemake, "plot")  # noqa: F821 -- injected by Snakemake
