"""The workflow stays `snakemake --lint` clean and snakefmt-formatted, and its DAG resolves."""

from __future__ import annotations

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


def test_published_grid_dag_has_one_job_per_cell(tmp_path):
    proc = run(str(DRIVER_BIN / "snakemake"), "-n", "-d", str(tmp_path), "-s", str(REPO / "Snakefile"),
               "--cores", "32", "--quiet", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = dict(line.split()[:2] for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in
                  ("train_cell", "train_cell_multinode", "partition_subset", "download"))
    assert counts == {"download": "1", "partition_subset": "5", "train_cell": "30"}


def test_cells_beyond_a_node_use_the_multinode_rule(tmp_path):
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("slurm:\n  cores_per_node: 8\n")
    proc = run(str(DRIVER_BIN / "snakemake"), "-n", "-d", str(tmp_path), "-s", str(REPO / "Snakefile"),
               "--cores", "32", "--quiet", "rules", "--configfile", str(nodes))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = dict(line.split()[:2] for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in
                  ("train_cell", "train_cell_multinode"))
    assert counts == {"train_cell": "20", "train_cell_multinode": "10"}
