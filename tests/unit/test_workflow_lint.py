"""The workflow stays `snakemake --lint` clean and snakefmt-formatted, and its DAG resolves."""

from __future__ import annotations

import re
import subprocess

from dlscale_testing import DRIVER_BIN, REPO


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_snakemake_lint_is_clean():
    proc = run(str(DRIVER_BIN / "snakemake"), "--lint", "--configfile", "config/demo.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_formatting():
    proc = run(str(DRIVER_BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dry_run(workdir, *args: str) -> subprocess.CompletedProcess:
    proc = run(str(DRIVER_BIN / "snakemake"), "-n", "-d", str(workdir), "-s", str(REPO / "Snakefile"),
               "--cores", "32", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def job_counts(proc: subprocess.CompletedProcess) -> dict[str, str]:
    rules = ("train_cell", "train_cell_torch", "partition_subset", "download")
    return dict(line.split()[:2] for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in rules)


def test_published_grid_dag_has_one_job_per_cell(tmp_path):
    proc = dry_run(tmp_path, "--quiet", "rules")
    assert job_counts(proc) == {"download": "1", "partition_subset": "5", "train_cell": "30"}


def test_a_dry_run_writes_nothing(tmp_path):
    """Nothing of the workflow's own at parse time or in -n: only Snakemake's .snakemake/ folders."""
    config = tmp_path / "my.yaml"
    config.write_text("backends: [bigdl, torch]\n")
    dry_run(tmp_path, "--configfile", str(config))
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert [p for p in made if not p.startswith(".snakemake/")] == ["my.yaml"]
    assert [p for p in made if p.startswith(".snakemake/")] in ([], [".snakemake/iocache/latest.pkl"])


def cell_jobs(proc: subprocess.CompletedProcess) -> dict[int, set[str]]:
    """cores -> the resources lines of the train_cell jobs of a dry run with those cores."""
    found: dict[int, set[str]] = {}
    for block in (proc.stdout + proc.stderr).split("\nrule ")[1:]:
        if not block.startswith("train_cell:"):
            continue
        cores = int(re.search(r"cores=(\d+)", block).group(1))
        found.setdefault(cores, set()).add(re.search(r"^    resources: (.*)$", block, flags=re.M).group(1))
    return found


def test_cells_beyond_a_node_get_nodes_tasks_and_mpi(tmp_path):
    """One rule; a cell of more cores than slurm.cores_per_node asks for whole nodes, one task
    per node, and `mpi` (no srun -n1 around it); the others ask for what they always did."""
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("slurm:\n  cores_per_node: 8\n")
    proc = dry_run(tmp_path, "--configfile", str(nodes))
    jobs = cell_jobs(proc)
    assert sorted(jobs) == [1, 2, 4, 8, 16, 32] and sum(len(lines) for lines in jobs.values()) == 30
    for cores, lines in jobs.items():
        for line in lines:
            resources = dict(item.split("=", 1) for item in line.split(", "))
            assert resources["cpus_per_task"] == str(min(cores, 8))
            if cores > 8:
                assert (resources["nodes"], resources["tasks"], resources["mpi"]) == (str(cores // 8),) * 2 + ("srun",)
            else:
                assert not {"nodes", "tasks", "mpi"} & set(resources), line
