"""The Markdown tables: heading, notes and a right-aligned table of formatted values."""

from __future__ import annotations

import statistics
from pathlib import Path

from dlscale.aggregate import aggregate
from dlscale.tables import AVERAGE
from synthetic_cells import DATASET, GRID, write_grid


def test_markdown_tables_shape_and_heading(tmp_path: Path) -> None:
    write_grid(tmp_path)
    aggregate(GRID, tmp_path / "t", workdir=tmp_path)
    runtime_md = (tmp_path / "t" / "runtime_train_bigdl_strong.md").read_text().splitlines()
    heading = runtime_md[0]
    assert heading.startswith("### Runtime (s)")
    for word in (DATASET, "bigdl", "strong scaling", "train phase", "mean ± sample std", "2 repetitions"):
        assert word in heading
    table = [line for line in runtime_md if line.startswith("|")]
    assert table[0] == "| size | 1 core | 2 cores | 4 cores |"
    assert table[1] == "|---:|---:|---:|---:|"
    assert (
        table[2]
        == f"| 100 | 11.00 ± {statistics.stdev([10, 12]):.2f} | 5.50 ± {statistics.stdev([6, 5]):.2f} | 4.00 ± 0.00 |"
    )
    assert len(table) == 2 + 2  # header, separator, two sizes

    speedup_md = (tmp_path / "t" / "speedup_total_bigdl_strong.md").read_text().splitlines()
    rows = [line for line in speedup_md if line.startswith("|")]
    assert len(rows) == 2 + 2 + 1 and rows[-1].startswith(f"| **{AVERAGE}** |")
    assert "speed-up = T(1 core) / T(N cores)" in "\n".join(speedup_md)
