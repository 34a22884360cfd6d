"""Snakemake script of the download rule: put the four verified raw IDX files in place.

params: dataset (catalog name, or a name of your own), offline_dir (folder holding the files, or
None to download), mirrors (list of base URLs, or None for the catalog's), sha256 (file name ->
SHA-256, for a dataset of your own; optional), timeout (seconds, optional).
output: the four files, all in one folder (resources/<dataset>/raw/). log: one file.
"""

from dlscale.custom_dataset import dataset_catalog
from dlscale.datasets import DEFAULT_TIMEOUT_S, fetch_dataset
from dlscale.rule_script import check_declared_outputs, one_folder, run_logged


def main(smk) -> None:
    fetched = fetch_dataset(
        smk.params.dataset,
        one_folder(smk.output, "download outputs"),
        offline_dir=getattr(smk.params, "offline_dir", None) or None,
        mirrors=getattr(smk.params, "mirrors", None) or None,
        timeout=float(getattr(smk.params, "timeout", None) or DEFAULT_TIMEOUT_S),
        catalog=dataset_catalog(smk.params.dataset, getattr(smk.params, "sha256", None)),
    )
    check_declared_outputs(smk.output, fetched, f"dlscale.datasets.fetch_dataset({smk.params.dataset!r})")


if __name__ == "__main__":
    run_logged(main, snakemake, "download")  # noqa: F821 -- injected by Snakemake
