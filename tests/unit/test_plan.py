"""The plan: estimates from measured cells (fitted), else the published table scaled by them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dlscale import plan, resources, scaling
from dlscale.grid import Grid
from dlscale_testing import DRIVER_BIN, FASHION_MNIST
from synthetic_cells import DATASET, write_grid

REPO = Path(__file__).resolve().parents[2]
REFERENCE_DIR = REPO / "workflow" / "resources" / "published"
# t_total of the demo's four cells on this machine (fashion-mnist, 1 epoch; README)
DEMO_TOTAL_S = {(1000, 1): 37.18, (1000, 2): 23.05, (5000, 1): 71.96, (5000, 2): 41.69}


def _cells(walls: dict[tuple[int, int], list[float]], epochs: int = 1, train_share: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame(
        [dict(backend="bigdl", scaling="strong", size=size, cores=cores, repetition=rep, epochs=epochs,
              t_total=wall, t_train=wall * train_share)
         for (size, cores), runs in walls.items() for rep, wall in enumerate(runs, start=1)]
    )


def _noisy_usl_walls(seed: int = 0) -> dict[tuple[int, int], list[float]]:
    """3 runs per cell of a USL-shaped study with 10% run-to-run noise."""
    rng = np.random.default_rng(seed)
    walls = {}
    for size in (1000, 5000, 10000):
        for cores in (1, 2, 4, 8):
            mean = (10 + size / 100) / scaling.usl_speedup(cores, 0.35, 0.005)
            walls[(size, cores)] = list(mean * rng.uniform(0.9, 1.1, 3))
    return walls


@pytest.mark.parametrize("walls", [_noisy_usl_walls(), {k: [v] for k, v in DEMO_TOTAL_S.items()}],
                         ids=["usl-with-noise", "demo-cells"])
def test_plan_from_measured_cells_predicts_their_own_runtimes_within_the_safety_factor(walls) -> None:
    sizes = sorted({s for s, _ in walls})
    cores = sorted({c for _, c in walls})
    grid = Grid.from_params("d", "bigdl", "strong", sizes, cores, max(len(r) for r in walls.values()))
    table = plan.make_plan(grid, 1, _cells(walls), REFERENCE_DIR).set_index(["size", "cores"])
    for (size, n), runs in walls.items():
        row = table.loc[(size, n)]
        assert row["source"].startswith("fitted"), row["source"]
        for actual in runs:
            assert actual / plan.SAFETY_FACTOR <= row["wall_s"] <= actual * plan.SAFETY_FACTOR
            assert actual <= row["slurm_runtime_min"] * 60  # the walltime request covers the run


def test_unmeasured_sizes_scale_the_published_table_by_the_measured_ratio() -> None:
    grid = Grid.from_params("d", "bigdl", "strong", [1000, 5000, 60000], [1, 2, 4], 1)
    table = plan.make_plan(grid, 1, _cells({k: [v] for k, v in DEMO_TOTAL_S.items()}), REFERENCE_DIR)
    big = table[table["size"] == 60000].set_index("cores")
    ratios = [DEMO_TOTAL_S[(s, c)] / p for (s, c), p in {(1000, 1): 6.11, (1000, 2): 4.87, (5000, 1): 22.97,
                                                               (5000, 2): 16.22}.items()]
    assert big.loc[1, "wall_s"] == pytest.approx(243.05 * np.median(ratios))
    assert big.loc[4, "source"].startswith("published x ") and "4 runs" in big.loc[4, "source"]
    assert big.loc[1, "slurm_runtime_min"] == plan.runtime_minutes(big.loc[1, "wall_s"])
    assert big.loc[1, "mem_mb"] == resources.cell_mem_mb("bigdl", 60000)
    assert big.loc[2, "core_hours"] == pytest.approx(2 * big.loc[2, "wall_s"] / 3600)


def test_nothing_measured_reads_unscaled_and_keeps_the_pessimistic_walltime() -> None:
    grid = Grid.from_params("d", "bigdl", "strong", [1000, 2000], [1, 64], 1)
    table = plan.make_plan(grid, 2, _cells({}), REFERENCE_DIR, cores_per_node=32).set_index(["size", "cores"])
    assert table.loc[(1000, 1), "wall_s"] == pytest.approx(6.11)
    assert table.loc[(1000, 1), "source"].startswith(plan.UNSCALED)
    assert table.loc[(2000, 1), "wall_s"] > 6.11  # a size between published rows: linear in the size
    assert table.loc[(1000, 64), "wall_s"] > 0  # beyond the published cores: the published average USL
    for (size, cores), row in table.iterrows():
        assert row["slurm_runtime_min"] == resources.cell_runtime(size, cores, 2, 32)


def test_other_epochs_rescale_the_training_part_only() -> None:
    walls = plan.measured_walls(_cells({(1000, 1): [100.0]}, epochs=2, train_share=0.8), epochs=1)
    assert walls["wall_s"].item() == pytest.approx(20 + 40)


def test_runtime_request_has_a_floor_and_doubles_on_retry() -> None:
    assert plan.runtime_minutes(30) == plan.MIN_RUNTIME_MIN
    assert plan.runtime_minutes(3600) == 120
    assert plan.runtime_minutes(3600, attempt=2) == 240


def test_the_command_prints_every_cell_and_the_totals(tmp_path: Path, capsys) -> None:
    config = tmp_path / "grid.yaml"
    config.write_text("dataset: {name: nothing-measured}\ngrid: {sizes: [1000, 5000], cores: [1, 2], repetitions: 1}\n")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    (tmp_path / "workflow" / "resources").mkdir(parents=True)
    (tmp_path / "workflow" / "resources" / "published").symlink_to(REFERENCE_DIR)
    args = ["--configfile", str(config), "--workdir", str(tmp_path), "--csv", str(tmp_path / "p.csv"), "--record"]
    assert plan.main(args) == 0
    out = capsys.readouterr().out
    assert "Plan for dataset nothing-measured" in out and out.count(plan.UNSCALED) == 4
    assert "total: 4 runs of 4 cells" in out
    assert len(pd.read_csv(tmp_path / "p.csv")) == 4
    assert len(pd.read_csv(tmp_path / plan.plan_file("nothing-measured"))) == 4


def test_a_recorded_cell_keeps_the_estimate_it_had_before_it_ran(tmp_path: Path) -> None:
    grid = Grid.from_params("d", "bigdl", "strong", [1000, 5000], [1, 2], 1)
    path = tmp_path / plan.plan_file("d")
    before = plan.record_plan(plan.make_plan(grid, 1, _cells({}), REFERENCE_DIR), path, _cells({}))
    assert (before["source"].str.startswith(plan.UNSCALED)).all()
    measured = _cells({(1000, 1): [37.18], (1000, 2): [23.05]})
    after = plan.record_plan(plan.make_plan(grid, 1, measured, REFERENCE_DIR), path, measured)
    after = after.set_index(["size", "cores"])
    assert after.loc[(1000, 1), "wall_s"] == pytest.approx(6.11)  # its estimate before it ran
    assert after.loc[(5000, 2), "source"].startswith("published x ")  # not run yet: the new estimate
    assert len(after) == 4
    everything = _cells({(s, c): [30.0] for s in (1000, 5000) for c in (1, 2)})
    plan.record_plan(plan.make_plan(grid, 1, everything, REFERENCE_DIR), path, everything)
    text = path.read_bytes()
    plan.record_plan(plan.make_plan(grid, 1, everything, REFERENCE_DIR), path, everything)
    assert path.read_bytes() == text  # all cells ran: nothing changes on the next start


def test_a_bad_metrics_file_does_not_stop_the_plan(tmp_path: Path, caplog) -> None:
    config = plan.load_config([], REPO)
    config["dataset"]["name"] = "d"
    config["grid"] = {"sizes": [1000], "cores": [1], "repetitions": 1}
    bad = tmp_path / "results/cells/d/bigdl/strong/n1000/c1/r1/metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    table = plan.plan_for_config(config, tmp_path, reference_dir=REFERENCE_DIR)
    assert table["source"].str.startswith(plan.UNSCALED).all()
    assert "the plan ignores the measured cells" in caplog.text
    assert plan.planned_runtimes(table) == {("bigdl", "strong", 1000, 1): resources.cell_runtime(1000, 1, 1, 32)}


def test_the_cells_resources_take_the_plans_request_and_double_it_on_retry() -> None:
    config = plan.load_config([], REPO)
    key = ("bigdl", "strong", 5000, 2)
    sizing = resources.CellResources.from_config(config, lambda: {key: 12})
    wildcards = SimpleNamespace(scaling="strong", size="5000", cores="2")
    assert [sizing.bigdl_runtime(wildcards, attempt) for attempt in (1, 2)] == [12, 24]
    assert sizing.torch_runtime(wildcards, 1) == sizing.runtime(wildcards, 1)  # not planned: pessimistic


def test_a_dry_run_asks_slurm_for_the_planned_runtime_of_each_cell(tmp_path: Path) -> None:
    """The workflow's wiring: with cells measured at 1, 2 and 4 cores, the 8-core cells the
    dry run schedules ask for the plan's runtime (fitted, floored at MIN_RUNTIME_MIN)."""
    write_grid(tmp_path)  # sizes 100 and 200 at 1, 2 and 4 cores, 2 repetitions: seconds each
    config = tmp_path / "grid.yaml"
    config.write_text(
        f"dataset: {{name: {DATASET}, dir: {FASHION_MNIST}}}\n"
        "grid: {sizes: [100, 200], cores: [1, 2, 4, 8], repetitions: 2}\n"
    )
    proc = subprocess.run(
        [str(DRIVER_BIN / "snakemake"), "-n", "-d", str(tmp_path), "-s", str(REPO / "Snakefile"), "--cores", "8",
         "--configfile", str(config)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    requests = re.findall(r"^rule train_cell:\n(?:    .*\n)*?    resources: .*runtime=(\d+)", proc.stdout, flags=re.M)
    assert requests == [str(plan.MIN_RUNTIME_MIN)] * 4  # 2 sizes x 2 repetitions at 8 cores
    pessimistic = resources.cell_runtime(200, 8, 1, 32)
    assert pessimistic > plan.MIN_RUNTIME_MIN
    assert not (tmp_path / plan.plan_file(DATASET)).exists()  # a dry run records nothing
