"""The common frame of the workflow's thin `script:`s: log to the rule's log, and put the clear
message of a failure there too (Snakemake shows that log with --show-failed-logs); and the two
checks every script makes of the files its rule declares."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable


def run_logged(main: Callable[[Any], None], smk: Any, what: str) -> None:
    """Run ``main(snakemake)`` with logging sent to ``smk.log[0]`` (stderr without a log)."""
    target = {"filename": smk.log[0]} if len(smk.log) else {}
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True, **target
    )
    logging.captureWarnings(True)
    try:
        main(smk)
    except Exception:
        logging.getLogger("dlscale").exception("%s failed", what)
        raise


def one_folder(files: Iterable[str | Path], what: str) -> Path:
    """The folder that holds every one of ``files`` (the package functions write or read one folder)."""
    folders = {Path(path).parent for path in files}
    if len(folders) != 1:
        raise ValueError(
            f"the {what} must share one folder, got {sorted(map(str, folders))}. "
            "Fix: declare them in the rule under one folder (see dlscale.paths)."
        )
    return folders.pop()


def check_declared_outputs(declared: Iterable[str | Path], written: Iterable[str | Path], writer: str) -> None:
    """Every output the rule declares is among the files ``writer`` wrote: fail here, naming
    them, rather than in Snakemake's 'missing output' check."""
    produced = {Path(path).resolve() for path in written}
    absent = [str(path) for path in declared if Path(path).resolve() not in produced]
    if absent:
        raise RuntimeError(
            f"the rule declares outputs that {writer} does not write: {', '.join(absent)}. "
            f"Fix: make the rule's output match what {writer} writes (its file names are in dlscale.paths)."
        )
