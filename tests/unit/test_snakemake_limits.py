"""What Snakemake's own means cannot do for the workflow, shown on a toy workflow of the same
shape (cells that wait for every subset): why `cell_inputs` (workflow/rules/common.smk) gives a
completed cell no inputs instead of marking them `ancient()`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from dlscale_testing import DRIVER_BIN

TOY = """
SIZES = config["sizes"]

rule all:
    input: expand("cells/c{s}.txt", s=SIZES)

rule part:
    output: directory("res/sub{s}")
    params: files=config["files"]
    shell: "mkdir -p {output} && echo {params.files} > {output}/p"

rule cell:
    input:
        train=ancient("res/sub{s}"),
        prepared=ancient(expand("res/sub{s2}", s2=SIZES)),
    output: "cells/c{s}.txt"
    shell: "date +%s%N > {output}"
"""


def snakemake(workdir: Path, *args: str) -> str:
    proc = subprocess.run([str(DRIVER_BIN / "snakemake"), "-c1", "--rerun-triggers", "mtime", "params",
                           "-d", str(workdir), "-s", str(workdir / "Snakefile"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def jobs(output: str) -> list[str]:
    return sorted(re.findall(r"^rule (\w+):\n    (?:input: .*\n    )?output: (\S+)", output, flags=re.M))


def test_ancient_inputs_do_not_keep_completed_jobs(tmp_path):
    (tmp_path / "Snakefile").write_text(TOY)
    snakemake(tmp_path, "--config", "sizes=[1,2]", "files=2")
    assert "Nothing to be done" in snakemake(tmp_path, "-n", "--config", "sizes=[1,2]", "files=2")
    # A grown grid: the new subset is made in this run, so every completed cell reruns, although
    # all its inputs are ancient() (Snakemake skips a job only if its ancient inputs exist).
    grown = jobs(snakemake(tmp_path, "-n", "--config", "sizes=[1,2,3]", "files=2"))
    assert ("cell", "cells/c1.txt") in grown and ("cell", "cells/c2.txt") in grown
    # Changed settings of the data: the data is remade although no cell will run on it.
    changed = jobs(snakemake(tmp_path, "-n", "--config", "sizes=[1,2]", "files=3"))
    assert ("part", "res/sub1") in changed and not [job for job in changed if job[0] == "cell"]
