"""The common frame of the workflow's thin `script:`s: log to the rule's log, and put the clear
message of a failure there too (Snakemake shows that log with --show-failed-logs)."""

from __future__ import annotations

import logging
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
