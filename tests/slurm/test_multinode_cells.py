"""Multi-node cells for real: the BigDL cell across two Slurm nodes of the multi-node test cluster
(tests/slurm/multinode-up.sh: nodes dlscale-n1 and dlscale-n2, one CPU each, each in its own
network namespace with its own hostname, address and node-local $SLURM_TMPDIR).

With ``slurm.cores_per_node: 1`` a 2-core cell spans both nodes: `snakemake --profile slurm`
submits it with --nodes=2, the cell runs the master, the driver and one worker on the first
node and starts the second node's worker with srun (dlscale.node_worker). Faults are injected
from outside: scancel, a SIGKILLed worker JVM on the second node, an allocation of one node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dlscale.spark_node import MKL_CPU_VAR, mkl_cpu_setting, node_cpuinfo
from dlscale_testing import TRAINER_PYTHON
from slurm_helpers import (POLL_CAP, REPO, SNAKEMAKE, multi_env, multi_node_names, node_address, node_tmpdir,
                           processes_on_node, run, sacct_rows, study_config)

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

SIZE = 512
CELL = f"results/cells/fashion-mnist/bigdl/strong/n{SIZE}/c2/r{{rep}}/metrics.json"
CELL_LOG = f"results/logs/cells/fashion-mnist/bigdl/strong/n{SIZE}/c2/r{{rep}}.log"
TRAINING_STARTED = "[Epoch 1 "  # BigDL's optimizer logs each iteration at INFO
OVERRIDES = [
    "--default-resources", "slurm_partition=multi", "slurm_account=root",
    "--dlscale-slurm-init-seconds-before-status-checks", "3", *POLL_CAP, "--latency-wait", "5", "--jobs", "1",
]
N1, N2 = multi_node_names(2)
# What a cell leaves if its teardown fails: JVMs, node workers, Python workers, and the in-job
# Snakemake (the test clusters' Epilog kills a job's orphans, as cgroups would: tests/slurm/epilog.sh)
SPARK_PROCESS = re.compile(r"java .*org\.apache\.spark|dlscale\.node_worker|pyspark\.daemon|-m snakemake ")


def profile_command(workdir: Path, *extra: str) -> list[str]:
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--profile", str(REPO / "slurm"),
            "--configfile", str(workdir / "test-config.yaml"), *OVERRIDES, *extra]


def listening_addresses(pid: int) -> set[str]:
    """The local IPv4 addresses of the TCP sockets process ``pid`` listens on (its own network
    namespace's /proc/PID/net tables; IPv4-mapped IPv6 included, 0.0.0.0/:: as "any")."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                  if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
    except OSError:
        return set()
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            if table == "tcp6":
                if raw == bytes(16):
                    found.add("any")
                    continue
                raw = raw[12:]  # ::ffff:a.b.c.d, stored as four little-endian words
            found.add("any" if raw == bytes(4) else socket.inet_ntoa(raw[::-1]))
    return found


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def left_on_nodes() -> dict[str, list[str]]:
    """Spark/cell processes still running in each node's network namespace, and cell scratch
    directories still in each node's $SLURM_TMPDIR."""
    found = {}
    for node in (N1, N2):
        procs = [cmd for _, cmd in processes_on_node(node) if SPARK_PROCESS.search(cmd)]
        scratch = [str(p) for p in node_tmpdir(node).glob("dlscale-cell-*")]
        if procs or scratch:
            found[node] = procs + scratch
    return found


def wait_nothing_left(timeout: float = 60) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while (left := left_on_nodes()) and time.monotonic() < deadline:
        time.sleep(1)
    return left


@pytest.fixture(scope="module")
def spanning_study(multi_cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multinode-study")
    study_config(workdir, [2], exclusive=True, size=SIZE, slurm={"cores_per_node": 1})
    proc = run(profile_command(workdir), timeout=1500, env=multi_env())
    return workdir, proc


def test_a_two_core_cell_spans_both_nodes_and_trains(spanning_study):
    workdir, proc = spanning_study
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    metrics = json.loads((workdir / CELL.format(rep=1)).read_text())
    assert metrics["nodes"] == [N1, N2]
    assert metrics["cores_per_node"] == 1
    # the executors' own reports: one on each node, each confined to one CPU, not the same one
    executors = metrics["executors"]
    assert sorted(e["host"] for e in executors) == [N1, N2], executors
    assert all(len(e["cpus_allowed"]) == 1 for e in executors), executors
    assert len({e["cpus_allowed"][0] for e in executors}) == 2, executors
    # each node chose MKL's kernels for its own CPU (the first node's choice does not travel with srun)
    assert [e[MKL_CPU_VAR] for e in executors] == [mkl_cpu_setting(node_cpuinfo(), {}).get(MKL_CPU_VAR)] * 2, executors
    # both executors' library paths start with BigDL's MKL as `make envs` extracted it (README, step 18)
    native = str(TRAINER_PYTHON.parent.parent / "dlscale-cds" / "native")
    assert [e["LD_LIBRARY_PATH"].split(":")[0] for e in executors] == [native] * 2, executors
    # the values the driver's SparkContext had
    assert metrics["spark_conf"]["spark.executor.cores"] == "1"
    assert metrics["spark_conf"]["spark.cores.max"] == "2"
    assert metrics["spark_conf"]["spark.master"].startswith("spark://198.18.")  # the first node's address
    assert metrics["test_accuracy"] > 0.2
    job = sacct_rows(["-j", metrics["slurm_job_id"]], "JobID,State,AllocCPUS,NNodes,NodeList", 1,
                     env=multi_env())[0]
    assert job["State"] == "COMPLETED" and job["NNodes"] == "2" and job["AllocCPUS"] == "2", job
    assert wait_nothing_left() == {}


def prepared(spanning_study, tmp_path: Path, repetitions: int = 1) -> Path:
    """A new study of the same cell that reuses the prepared data (mtimes kept)."""
    source, _ = spanning_study
    workdir = tmp_path / "study"
    workdir.mkdir()
    shutil.copytree(source / "resources", workdir / "resources")
    study_config(workdir, [2], repetitions, exclusive=True, size=SIZE, slurm={"cores_per_node": 1})
    return workdir


def run_with_fault(workdir: Path, fault, timeout: float = 900) -> tuple[subprocess.CompletedProcess, str]:
    """Run the study (no retry), call ``fault(log_path)`` once the cell is training, and wait.
    Snakemake's output goes to a file: a pipe nobody reads while it runs fills up (show-failed-logs
    prints the cell's log) and blocks Snakemake for good."""
    log = workdir / CELL_LOG.format(rep=1)
    output = workdir / "snakemake.out"
    with open(output, "w") as sink:
        proc = subprocess.Popen(profile_command(workdir, "--retries", "0"), env=multi_env(), text=True,
                                stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    injected = ""
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if not injected and log.exists() and TRAINING_STARTED in log.read_text(errors="replace"):
                injected = fault(log)
            time.sleep(0.5)
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the study did not end within {timeout:.0f} s after the fault ({injected}):\n"
                    f"{output.read_text(errors='replace')[-4000:]}")
    out = output.read_text(errors="replace")
    assert injected, f"the cell never started training:\n{out[-4000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, ""), injected


def running_cell_job() -> str:
    res = run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"], env=multi_env())
    jobs = [line.split()[0] for line in res.stdout.splitlines() if "rule_train_cell" in line]
    assert len(jobs) == 1, res.stdout
    return jobs[0]


def test_scancel_mid_training_leaves_nothing_on_either_node(spanning_study, tmp_path):
    workdir = prepared(spanning_study, tmp_path)

    workers: dict[str, set[str]] = {}
    anywhere: list[str] = []
    scratch: dict[str, list[str]] = {}

    secrets: dict[str, set[str]] = {}
    on_command_lines: list[str] = []

    def scancel(_log: Path) -> str:
        job = running_cell_job()
        for node in (N1, N2):  # positive control: each node has its scratch while the cell runs
            scratch[node] = [p.name for p in node_tmpdir(node).glob("dlscale-cell-*")]
        for node in (N1, N2):  # the secret reached each node's worker through its environment...
            for pid, cmd in processes_on_node(node):
                if "deploy.worker.Worker" in cmd:
                    secrets.setdefault(node, set()).add(environ(pid).get("_SPARK_AUTH_SECRET", ""))
        secret = next(iter(secrets.get(N1, {""})))
        for node in (N1, N2):  # ...and is on no command line
            on_command_lines.extend(cmd for _, cmd in processes_on_node(node) if secret and secret in cmd)
        for node in (N1, N2):  # where each node's processes listen, seen before the fault
            for pid, cmd in processes_on_node(node):
                if not SPARK_PROCESS.search(cmd):
                    continue
                addresses = listening_addresses(pid)
                if "deploy.worker.Worker" in cmd:
                    workers.setdefault(node, set()).update(addresses)
                if "any" in addresses and not cmd.startswith("srun "):  # Slurm's own I/O ports
                    anywhere.append(cmd)
        run(["scancel", job], env=multi_env())
        return job

    proc, job = run_with_fault(workdir, scancel)
    # each worker listened on its own node's address only; nothing on all interfaces (the
    # driver's py4j gateway and the executors' Python daemons use loopback, inside their node)
    assert workers == {N1: {node_address(N1)}, N2: {node_address(N2)}}, workers
    assert anywhere == []
    assert len(scratch[N1]) == 1 and len(scratch[N2]) == 1, scratch
    assert len(secrets[N1]) == 1 and secrets[N1] == secrets[N2] and "" not in secrets[N1], secrets
    assert on_command_lines == []
    assert proc.returncode != 0
    assert not (workdir / CELL.format(rep=1)).exists()
    assert wait_nothing_left() == {}
    assert "SIGTERM" in (workdir / CELL_LOG.format(rep=1)).read_text()


def test_a_worker_killed_on_the_second_node_fails_the_cell_naming_it(spanning_study, tmp_path):
    workdir = prepared(spanning_study, tmp_path)

    def kill_remote_worker(_log: Path) -> str:
        workers = [pid for pid, cmd in processes_on_node(N2) if "deploy.worker.Worker" in cmd]
        assert len(workers) == 1, processes_on_node(N2)
        os.kill(workers[0], signal.SIGKILL)
        return f"SIGKILL worker pid {workers[0]} on {N2}"

    proc, _ = run_with_fault(workdir, kill_remote_worker)
    assert proc.returncode != 0
    log = (workdir / CELL_LOG.format(rep=1)).read_text()
    assert re.search(rf"FAILED: .*worker on {N2}.* died", log), log[-3000:]
    assert not (workdir / CELL.format(rep=1)).exists()
    assert wait_nothing_left() == {}


def test_an_allocation_of_fewer_nodes_than_the_cell_needs_is_one_clear_error(spanning_study, tmp_path):
    source, _ = spanning_study
    out = tmp_path / "cell.out"
    trainer_python = REPO / ".venv" / "trainer" / "bin" / "python"
    cell = (f"{trainer_python} -m dlscale.cell --dataset fashion-mnist --size {SIZE} --cores 2 "
            f"--cores-per-node 1 --train-dir {source}/resources/fashion-mnist/subsets/n{SIZE} "
            f"--test-dir {source}/resources/fashion-mnist/test --out {tmp_path}/metrics.json")
    env = multi_env(PYTHONPATH=str(REPO / "src"))
    res = run(["sbatch", "--wait", "--parsable", "-N1", "-c1", "-o", str(out), "--wrap", cell], env=env, timeout=300)
    assert res.returncode != 0  # the cell exits non-zero, so does the job
    text = out.read_text()
    assert "this cell needs 2 nodes" in text and "has 1" in text and "Fix:" in text, text[-2000:]
    assert text.count("FAILED") == 1
    assert not (tmp_path / "metrics.json").exists()


def test_the_allocation_wrapper_runs_multinode_cells_inside_it(spanning_study, tmp_path):
    workdir = prepared(spanning_study, tmp_path)
    command = ["sbatch", "--wait", "--parsable", "--nodes=2", "--cpus-per-task=1", "-p", "multi",
               "-o", str(workdir / "wrapper-%j.log"), str(REPO / "slurm" / "allocation.sbatch"),
               "-d", str(workdir), "--configfile", str(workdir / "test-config.yaml")]
    res = run(command, timeout=1500, cwd=REPO, env=multi_env())
    logs = "".join(p.read_text() for p in workdir.glob("wrapper-*.log"))
    assert res.returncode == 0, res.stderr + logs[-3000:]
    job = res.stdout.strip().split(";")[0]
    metrics = json.loads((workdir / CELL.format(rep=1)).read_text())
    assert metrics["slurm_job_id"] == job  # inside the wrapper's own allocation
    assert metrics["nodes"] == [N1, N2]
    assert sorted(e["host"] for e in metrics["executors"]) == [N1, N2]
    assert wait_nothing_left() == {}
