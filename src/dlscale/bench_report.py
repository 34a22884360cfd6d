"""The benchmark's report: Markdown tables (each described once, as columns), a figure, the files.

A table is a list of columns (:class:`Column`: header, alignment, how to write a row's value) and a
list of rows (dicts); :func:`_table` turns both into Markdown lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dlscale.bench_summary import BREAKDOWN_PHASES, Targets

Row = dict[str, Any]
NUMBER, TEXT = "---:", "---"  # Markdown column alignments
PUBLISHED_ROW = "published BigDL (Xeon, MNIST), %d records"
PER_CELL_NOTE = (
    "records/s: train records / train phase (the published definition: it includes BigDL's one-off",
    "caching of the training set and the JIT warm-up); steady records/s: BigDL's own per-iteration",
    "figures, second half of the iterations (from the cell's log). load avg: the machine's 1-minute",
    "load average around the cells (2 CPUs here): above the cell's own core count, other work shared",
    "the machine and the timings are pessimistic.",
)
OUTPUT_FILES = ("bench.md", "bench.json", "bench_cells.csv", "bench.png")


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


@dataclass(frozen=True)
class Column:
    header: str
    text: Callable[[Row], str]
    align: str = NUMBER


def text(key: str, header: str | None = None) -> Column:
    return Column(header or key, lambda row: str(row[key]), TEXT)


def number(key: str, spec: str = ".2f", header: str | None = None) -> Column:
    return Column(header or key, lambda row: _fmt(row.get(key, math.nan), spec))


def spread(key: str, spec: str, header: str) -> Column:
    """``mean ± std`` of ``key`` and ``key_std``."""
    return Column(header, lambda row: "%s ± %s" % (_fmt(row[key], spec), _fmt(row[f"{key}_std"], spec)))


def percent(key: str, header: str) -> Column:
    return Column(header, lambda row: "%s %%" % _fmt(100 * row[key], ".0f"))


def _line(cells: Iterable[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"  # an empty cell: "| |"


def _table(columns: Iterable[Column], rows: Iterable[Row], extra: Iterable[list[str]] = ()) -> list[str]:
    """Markdown lines: header, alignment, one line per row (``extra``: rows already written)."""
    columns = list(columns)
    body = [[column.text(row) for column in columns] for row in rows] + list(extra)
    return [_line(c.header for c in columns), "|" + "|".join(c.align for c in columns) + "|", *map(_line, body)]


GROUP_COLUMNS = (text("backend"), text("scaling"), Column("cores", lambda row: str(row["cores"])))
PER_CELL_COLUMNS = (
    *GROUP_COLUMNS,
    Column("batch", lambda row: str(row["batch"])),
    spread("train_s", ".1f", "train s"),
    number("records_per_s", ".0f", "records/s"),
    number("records_per_s_per_core", ".0f", "records/s per core"),
    number("steady_records_per_s_per_core", ".0f", "steady records/s per core"),
    spread("overhead_s", ".1f", "overhead s (start+stop+load)"),
    spread("fixed_s", ".1f", "fixed s (total-train)"),
    spread("total_s", ".1f", "total s"),
    number("test_accuracy", ".3f", "accuracy"),
    number("load_avg", ".1f", "load avg"),
)
BREAKDOWN_COLUMNS = (*GROUP_COLUMNS, *(number(f"{phase}_s", ".1f", phase) for phase in BREAKDOWN_PHASES),
                     number("unaccounted_s", ".1f", "unaccounted"), number("total_s", ".1f", "total"),
                     number("fixed_s", ".1f", "fixed (total-train)"))
SCALING_COLUMNS = (
    text("backend"),
    text("scaling"),
    Column("speed-up train", lambda row: "%sx (%d vs %d cores)" % (_fmt(row["speedup_train"]), row["cores"],
                                                                    row["base_cores"])),
    percent("efficiency_train", "efficiency train"),
    Column("speed-up total", lambda row: "%sx" % _fmt(row["speedup_total"])),
    percent("efficiency_total", "efficiency total"),
)
STUDY_COLUMNS = (
    text("backend"),
    Column("cells", lambda row: "%d" % row["cells"]),
    number("wall_s", ".0f", "wall s"),
    number("sum_train_s", ".0f", "sum of train s"),
    number("wall_over_train", header="wall / train"),
    number("sum_total_s", ".0f", "sum of totals s"),
    number("wall_over_total", header="wall / totals"),
)


def _per_core_rows(summary: dict[str, Any]) -> list[Row]:
    """One row per (group, core count): the group's keys and that core count's means."""
    return [
        {"backend": g["backend"], "scaling": g["scaling"], "cores": cores,
         "batch": g["batch_size"].get(int(cores), ""), **values}
        for g in summary["groups"]
        for cores, values in g["cores"].items()
    ]


def _published_lines(published: dict[str, Any]) -> list[str]:
    cores = published["cores"]
    return [
        "",
        "Published, beside them: %d records took %.2f s on 1 core and %.2f s on %d cores "
        "(%.0f and %.0f records/s per core); the published average speed-up at %d cores is %.2fx, "
        "its best %.2fx (%s). %s."
        % (published["size"], published["runtime_1_s"], published[f"runtime_{cores}_s"], cores,
           published["records_per_s_per_core_1"], published[f"records_per_s_per_core_{cores}"], cores,
           published["average_speedup"], published["best_speedup"], published["best_speedup_at"],
           published["note"].capitalize()),
    ]


def _context_lines(context: dict[str, Any]) -> list[str]:
    keys = ("dataset", "size", "cores", "repetitions", "epochs", "host", "cpus_usable")
    lines = [
        "dataset %s, size %s, cores %s, %s repetition(s), %s epoch(s); host %s (%s CPUs usable); %s"
        % (*(context.get(key) for key in keys), context.get("finished_at", ""))
    ]
    if context.get("load_before"):
        lines.append("load average before the run: %s; after: %s" % (context["load_before"], context.get("load_after")))
    for backend, q in (context.get("quiet_wait") or {}).items():
        lines.append("%s cells started %s (1-min load %.2f, threshold %.2f, waited %.0f s)"
                     % (backend, "on a quiet machine" if q["quiet"] else "on a BUSY machine", q["load"],
                        q["threshold"], q["waited_s"]))
    return lines


def format_report(summary: dict[str, Any], targets: list[dict[str, Any]], context: dict[str, Any]) -> str:
    """The printed report (also written as bench.md)."""
    per_core = _per_core_rows(summary)
    published = summary.get("published") or {}
    published_row = (
        [[PUBLISHED_ROW % published["size"], "strong", "%sx" % _fmt(published["speedup"]),
          "%s %%" % _fmt(100 * published["efficiency"], ".0f"), "", ""]] if published else []
    )
    scaling_rows = [{"backend": g["backend"], "scaling": g["scaling"], **g["scaling_figures"]}
                    for g in summary["groups"] if g["scaling_figures"]]
    study_rows = [{"backend": backend, **study} for backend, study in summary["studies"].items()]
    lines = [
        "# dlscale benchmark", "", *_context_lines(context),
        "", "## Per cell (means over repetitions; ± sample std)", "", *PER_CELL_NOTE, "",
        *_table(PER_CELL_COLUMNS, per_core),
        "", "## Where a cell's time goes (means, s)", "",
        *_table(BREAKDOWN_COLUMNS, per_core),
        "", "## Scaling (train phase and total), measured in this run", "",
        *_table(SCALING_COLUMNS, scaling_rows, published_row),
        *(_published_lines(published) if published else []),
        "", "## Study wall time against the sum of its train phases", "",
        *_table(STUDY_COLUMNS, study_rows),
        "", "## Targets (BigDL)", "",
    ]
    for t in targets:
        lines.append("- [%s] %s (%s): %s %s %s — %s" % ("met" if t["met"] else "MISSED", t["target"], t["scaling"],
                                                      _fmt(t["value"]), t["op"], _fmt(t["bound"]), t["detail"]))
    lines += ["", "%d of %d targets met." % (sum(t["met"] for t in targets), len(targets))]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures


def bench_figure(summary: dict[str, Any], out: Path) -> Path:
    """Three panels: train-phase speed-up (with ideal and published), records/s per core, time per cell."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 4.8), dpi=110)
    ax_speed, ax_rate, ax_time = fig.subplots(1, 3)
    labels, rates, colors = [], [], []
    palette = {"bigdl": "tab:blue", "torch": "tab:orange"}
    max_cores = 1
    for group in summary["groups"]:
        cores = sorted(int(c) for c in group["cores"])
        max_cores = max(max_cores, max(cores))
        base = group["cores"][str(cores[0])]["train_s"]
        speedups = [base / group["cores"][str(c)]["train_s"] for c in cores]
        style = "-" if group["scaling"] == "strong" else "--"
        ax_speed.plot(cores, speedups, style, marker="o", color=palette.get(group["backend"], "k"),
                      label="%s, %s scaling" % (group["backend"], group["scaling"]))
        for c in cores:
            labels.append("%s\n%s\n%d c" % (group["backend"], group["scaling"], c))
            rates.append(group["cores"][str(c)]["records_per_s_per_core"])
            colors.append(palette.get(group["backend"], "k"))
    ideal = list(range(1, max_cores + 1))
    ax_speed.plot(ideal, ideal, ":", color="0.5", label="ideal")
    published = summary.get("published") or {}
    if published:
        ax_speed.plot([1, published["cores"]], [1, published["speedup"]], "s-", color="0.3",
                      label="published BigDL, %d records" % published["size"])
    ax_speed.set_xlabel("cores")
    ax_speed.set_ylabel("train-phase speed-up")
    ax_speed.set_title("Speed-up (this run)")
    ax_speed.legend(fontsize="small")
    ax_speed.grid(alpha=0.3)

    ax_rate.bar(range(len(rates)), rates, color=colors)
    ax_rate.set_xticks(range(len(rates)), labels, fontsize="x-small")
    ax_rate.set_yscale("log")
    ax_rate.axhline(Targets().records_per_s_per_core, color="red", ls=":", label="target (BigDL) 500")
    if published:
        ax_rate.axhline(published["records_per_s_per_core_1"], color="0.3", ls="--",
                        label="published, 1 core (%.0f)" % published["records_per_s_per_core_1"])
    ax_rate.set_ylabel("train records/s per core (log)")
    ax_rate.set_title("Throughput per core")
    ax_rate.legend(fontsize="small")

    bottoms = [0.0] * len(labels)
    palette = matplotlib.colormaps["tab20"].colors  # one colour per phase, eleven of them
    phase_colors = dict(zip(BREAKDOWN_PHASES, palette))
    for phase in BREAKDOWN_PHASES:
        heights = []
        for group in summary["groups"]:
            for c in sorted(int(c) for c in group["cores"]):
                value = group["cores"][str(c)][f"{phase}_s"]
                heights.append(0.0 if math.isnan(value) else value)
        ax_time.bar(range(len(heights)), heights, bottom=bottoms, color=phase_colors[phase], label=phase)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax_time.set_xticks(range(len(labels)), labels, fontsize="x-small")
    ax_time.set_ylabel("seconds (mean per cell)")
    ax_time.set_title("Where a cell's time goes")
    ax_time.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(out)
    return out


def write_outputs(out: Path, cells: pd.DataFrame, summary: dict, targets: list, context: dict) -> str:
    """Write bench.{md,json,png} and bench_cells.csv into ``out``, print the report; return it."""
    report = format_report(summary, targets, context)
    (out / "bench.md").write_text(report)
    (out / "bench.json").write_text(
        json.dumps({"context": context, "summary": summary, "targets": targets}, indent=2, default=str)
    )
    cells.to_csv(out / "bench_cells.csv", index=False)
    bench_figure(summary, out / "bench.png")
    print(report)
    print("written: %s" % ", ".join(str(out / name) for name in OUTPUT_FILES))
    print("the study's own tables and figures: %s, %s" % (context["study_tables"], context["study_figures"]))
    return report
