"""The Markdown of the study's tables: formatted numbers under a heading that says what they are.

Each table states its definitions (speed-up, efficiency, the ``average`` row) and the warnings
of ``dlscale.tables.condition_warnings`` under its heading, so a table read alone is not misread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dlscale.tables import AVERAGE, GroupTables, baseline_cores, core_counts

MISSING = "missing"  # how a missing value reads in the Markdown tables


@dataclass(frozen=True)
class TableContext:
    """What a Markdown heading names: where the numbers come from and how many runs."""

    dataset: str
    backend: str
    scaling: str
    phase: str
    planned_repetitions: int
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.phase} phase — dataset {self.dataset}, backend {self.backend}, {self.scaling} scaling"

    def repetitions(self) -> str:
        n = self.planned_repetitions
        return f"{n} repetition" if n == 1 else f"{n} repetitions"


def _cores_header(n: int) -> str:
    return f"{n} core" if n == 1 else f"{n} cores"


def _markdown(heading: str, notes: Sequence[str], cells: pd.DataFrame) -> str:
    """Heading line, notes, then a right-aligned Markdown table of preformatted strings."""
    header = ["size", *(_cores_header(n) for n in core_counts(cells))]
    lines = [f"### {heading}", "", *notes, *([""] if notes else [])]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" for _ in header) + "|")
    for size, row in cells.iterrows():
        label = f"{size:,}" if isinstance(size, (int, np.integer)) else f"**{size}**"
        lines.append("| " + " | ".join([label, *row]) + " |")
    return "\n".join(lines) + "\n"


def _format_number(value: float) -> str:
    return MISSING if pd.isna(value) else f"{value:.2f}"


def _runtime_cell(mean: float, std: float, count: float, planned: int) -> str:
    if count == 0 or pd.isna(mean):
        return MISSING
    text = f"{mean:.2f}"
    if count > 1:
        text += f" ± {std:.2f}"
    if count < planned:
        text += f" ({int(count)} of {planned} reps)"
    return text


def _speedup_definition(base: int) -> str:
    base_text = _cores_header(base)
    why = "" if base == 1 else f"; baseline {base_text} because the grid has no 1-core cell"
    return f"speed-up = T({base_text}) / T(N cores), T = mean runtime{why}."


def runtime_markdown(tables: GroupTables, context: TableContext) -> str:
    planned = context.planned_repetitions
    stat = f"mean ± sample std over {context.repetitions()}" if planned > 1 else "one repetition, no spread"
    heading = f"Runtime (s), {context.describe()}; {stat}"
    cells = pd.DataFrame(
        [
            [_runtime_cell(m, s, c, planned) for m, s, c in zip(mrow, srow, crow)]
            for mrow, srow, crow in zip(tables.mean.values, tables.std.values, tables.count.values)
        ],
        index=tables.mean.index,
        columns=tables.mean.columns,
    )
    return _markdown(heading, [f"`{MISSING}`: no finished repetition of the cell.", *context.warnings], cells)


def ratio_markdown(kind: str, table: pd.DataFrame, context: TableContext) -> str:
    """Markdown of a speed-up or efficiency table, with its definition under the heading."""
    base = baseline_cores(table)
    title = "Speed-up" if kind == "speedup" else "Parallel efficiency"
    heading = f"{title} vs {_cores_header(base)}, {context.describe()}; from mean runtimes over {context.repetitions()}"
    definition = [_speedup_definition(base)]
    if kind == "efficiency":
        definition.append(f"efficiency = speed-up / (N / {base}).")
    definition.append(f"`{AVERAGE}`: mean of the size rows, taken before rounding; `{MISSING}`: no data.")
    return _markdown(heading, [" ".join(definition), *context.warnings], table.map(_format_number))
