"""What crossing nodes costs: the same 2-core BigDL cell on one node (2 CPUs) and across two
nodes (1 CPU each), interleaved, on the two test clusters of this folder.

    .venv/driver/bin/python tests/slurm/span_cost.py [--size 5000] [--reps 2]

Needs both test clusters up (slurm-up.sh and multinode-up.sh) and the trainer environment. It
prepares the data with the local executor in a scratch folder, runs each cell with `sbatch
--wait` (one node: the single-node cluster, `-N1 -c2`; two nodes: the multi-node cluster,
`-N2 --ntasks-per-node=1 -c1`, `--cores-per-node 1`), and prints a Markdown table of cluster
start, train, BigDL's steady-state time per iteration (dlscale.bench.steady_throughput) and
total, with the machine's load average around each cell. README "Cells across nodes" shows one
run's table. Not a test: speed is measured here and in `make bench`, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slurm_helpers import MULTI_CONF, REPO, login_node_env, wait_node_empty  # noqa: E402

from dlscale.bench import steady_throughput  # noqa: E402

SINGLE_CONF = os.environ.get("DLSCALE_SLURM_DIR", "/var/tmp/dlscale-slurm") + "/etc/slurm.conf"
LAYOUTS = {
    "one node, 2 CPUs": (SINGLE_CONF, ["-N1", "-c2", "-p", "debug"], 2),
    "two nodes, 1 CPU each": (str(MULTI_CONF), ["-N2", "--ntasks-per-node=1", "-c1", "-p", "multi"], 1),
}


def prepare(work: Path, size: int) -> None:
    config = work / "config.yaml"
    config.write_text(json.dumps({
        "dataset": {"name": "fashion-mnist", "dir": "/usr/share/datasets/fashion-mnist"},
        "grid": {"sizes": [size], "cores": [2], "repetitions": 1}, "partition": {"files": 2},
    }))
    subprocess.run([str(REPO / ".venv/driver/bin/snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work),
                    "--configfile", str(config), "--cores", "2", f"resources/fashion-mnist/subsets/n{size}",
                    "resources/fashion-mnist/test"], check=True, capture_output=True)


def run_cell(work: Path, size: int, layout: str, rep: int) -> dict:
    conf, sbatch_args, per_node = LAYOUTS[layout]
    out = work / f"{layout.split(',')[0].replace(' ', '-')}-r{rep}"
    cell = (f"{REPO}/.venv/trainer/bin/python -m dlscale.cell --dataset fashion-mnist --size {size} --cores 2 "
            f"--repetition {rep} --cores-per-node {per_node} --train-dir {work}/resources/fashion-mnist/subsets/n{size} "
            f"--test-dir {work}/resources/fashion-mnist/test --out {out}.json")
    env = login_node_env(SLURM_CONF=conf, PYTHONPATH=str(REPO / "src"))
    if layout.startswith("one"):
        os.environ["SLURM_CONF"] = conf
        node = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
        wait_node_empty(node, timeout=600)  # CPUs 0-1 (the node declares more than exist)
    load = os.getloadavg()[0]
    subprocess.run(["sbatch", "--wait", "-o", f"{out}.log", *sbatch_args, "--wrap", cell], env=env, check=True,
                   capture_output=True)
    metrics = json.loads(Path(f"{out}.json").read_text())
    steady = steady_throughput(Path(f"{out}.log").read_text(errors="replace"))
    return {"layout": layout, "nodes": metrics["nodes"], "load": (load, os.getloadavg()[0]),
            "cluster_start": metrics["timings_s"]["cluster_start"], "train": metrics["timings_s"]["train"],
            "iteration_s": metrics["batch_size"] / steady, "total": metrics["timings_s"]["total"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlscale-span-cost-", dir="/tmp") as tmp:
        work = Path(tmp)
        prepare(work, args.size)
        rows = [run_cell(work, args.size, layout, rep) for rep in range(1, args.reps + 1) for layout in LAYOUTS]
    print(f"| {args.size} records, 2 cores, {args.reps} runs each (mean; min-max) | cluster start s | train s "
          "| steady s per iteration | total s | load average (start-end) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for layout in LAYOUTS:
        mine = [row for row in rows if row["layout"] == layout]

        def cell(key: str, fmt: str = ".1f") -> str:
            values = [row[key] for row in mine]
            return f"{statistics.mean(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

        loads = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in (row["load"] for row in mine))
        print(f"| {layout} | {cell('cluster_start')} | {cell('train')} | {cell('iteration_s', '.3f')} "
              f"| {cell('total')} | {loads} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
