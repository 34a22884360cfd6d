"""Snakemake script of the aggregate rule: the cells' metrics.json -> tables (logic in dlscale.aggregate).

params: dataset, sizes, cores, repetitions (a count), backends, scaling_modes, allow_partial,
reference_dir (optional: the published tables, whose scaling model is fitted beside ours).
input: the metrics.json files (with allow_partial, only those that exist; when the rule gives
none, the grid's cells are looked up under the working directory via dlscale.paths.cell_dir).
output: files in one folder (paths.tables_dir): cells.csv, missing_cells.csv, the tables, the
scaling-model and cost tables (dlscale.analysis).
log: one file.
"""

import logging
from pathlib import Path

from dlscale.aggregate import aggregate
from dlscale.grid import Grid
from dlscale.rule_script import check_declared_outputs, one_folder, run_logged

log = logging.getLogger("dlscale.aggregate")


def main(smk) -> None:
    params = smk.params
    grid = Grid.from_params(
        params.dataset, params.backends, params.scaling_modes, params.sizes, params.cores, int(params.repetitions)
    )
    out_dir = one_folder(smk.output, "aggregate outputs")
    metrics = list(smk.input) or None  # None: find the grid's existing cells on disk
    written = aggregate(
        grid,
        out_dir,
        metrics,
        workdir=Path.cwd(),
        allow_partial=bool(params.allow_partial),
        reference_dir=getattr(params, "reference_dir", None) or None,
    )
    check_declared_outputs(smk.output, written, "dlscale.aggregate")
    log.info("wrote %d files", len(written))


if __name__ == "__main__":
    run_logged(main, snakemake, "aggregate")  # noqa: F821 -- injected by Snakemake
