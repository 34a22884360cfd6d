"""Snakemake script of the download rule: put the four verified raw IDX files in place.

params: dataset (catalog name), offline_dir (folder holding the files, or None to download),
mirrors (list of base URLs, or None for the catalog's), timeout (seconds, optional).
output: the four files, all in one folder (resources/<dataset>/raw/). log: one file.
"""

import logging
from pathlib import Path

from dlscale.datasets import DEFAULT_TIMEOUT_S, fetch_dataset

log = logging.getLogger("dlscale.download")


def main(smk) -> None:
    dest_dirs = {Path(path).parent for path in smk.output}
    if len(dest_dirs) != 1:
        raise ValueError(f"the download outputs must share one folder, got {sorted(map(str, dest_dirs))}")
    fetched = fetch_dataset(
        smk.params.dataset,
        dest_dirs.pop(),
        offline_dir=getattr(smk.params, "offline_dir", None) or None,
        mirrors=getattr(smk.params, "mirrors", None) or None,
        timeout=float(getattr(smk.params, "timeout", None) or DEFAULT_TIMEOUT_S),
    )
    missing = {Path(path) for path in smk.output} - set(fetched)
    if missing:
        raise ValueError(f"outputs not among the files of {smk.params.dataset}: {sorted(map(str, missing))}")


def _log_to(smk) -> None:
    target = {"filename": smk.log[0]} if len(smk.log) else {}
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True, **target
    )


if __name__ == "__main__":
    _log_to(snakemake)  # noqa: F821 -- injected by Snakemake
    try:
        main(snakemake)  # noqa: F821
    except Exception:
        log.exception("download failed")  # the clear message lands in the rule's log too
        raise
