"""Helpers shared by the tests that need the local Slurm of tests/slurm/slurm-up.sh."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlscale_testing import command_line, read_proc

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = os.environ.get("DLSCALE_DRIVER_SNAKEMAKE", str(REPO / ".venv" / "driver" / "bin" / "snakemake"))
REQUIRE = os.environ.get("DLSCALE_REQUIRE_SLURM") == "1"
# Prints the CPUs this process may run on, as a Python list.
AFFINITY = f'{shlex.quote(sys.executable)} -c "import os; print(sorted(os.sched_getaffinity(0)))"'


def skip_or_fail(reason: str) -> None:
    """Skip where Slurm is absent, but fail under DLSCALE_REQUIRE_SLURM=1 (CI, `make test`)."""
    if REQUIRE:
        pytest.fail(f"{reason} (DLSCALE_REQUIRE_SLURM=1)", pytrace=False)
    pytest.skip(reason)


def run(cmd: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def wait_node_empty(node: str, timeout: float = 180) -> None:
    """Wait until no job holds CPUs on the node, so ours get CPUs 0 and 1 (the node declares
    more CPUs than exist, and Slurm cannot pin a job to a CPU that does not exist)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(["scontrol", "-o", "show", "node", node]).stdout
        m = re.search(r"\bCPUAlloc=(\d+)", out)
        if m and m.group(1) == "0":
            return
        time.sleep(2)
    skip_or_fail(f"node {node} stayed busy with other jobs for {timeout:.0f}s")


def node_state(node: str) -> str:
    """slurmctld's state of ``node`` (e.g. IDLE, IDLE+DRAIN, DOWN*), '' if it does not answer."""
    out = run(["scontrol", "-o", "show", "node", node]).stdout
    m = re.search(r"\bState=(\S+)", out)
    return m.group(1) if m else ""


def sacct_rows(args: list[str], fields: str, want: int, timeout: float = 60, env: dict | None = None) -> list[dict]:
    """Poll sacct until `want` rows are in a final state (bounded); ``env``: e.g. multi_env()."""
    deadline = time.monotonic() + timeout
    names = fields.split(",")
    rows: list[dict] = []
    while time.monotonic() < deadline:
        res = run(["sacct", "-X", "-P", "-n", f"--format={fields}", *args], env=env)
        rows = [dict(zip(names, line.split("|"))) for line in res.stdout.splitlines() if line]
        if len(rows) >= want and all(r["State"] not in ("PENDING", "RUNNING", "COMPLETING") for r in rows):
            return rows
        time.sleep(1)
    pytest.fail(f"sacct {' '.join(args)} did not report {want} finished job(s) in {timeout:.0f}s: {rows}")


def wait_until(predicate, timeout: float, what: str):
    """Poll ``predicate`` every second until it gives a true value, and return that value; fail
    naming ``what`` if it has not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


def login_node_env(**extra: str) -> dict:
    """The environment of a user on a login node: no SLURM_* job variables (SLURM_CONF stays)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env.update(extra)
    return env


# --- The multi-node cluster of tests/slurm/multinode-up.sh (cluster dlscale-multi) ---------------
MULTI_STATE = Path(os.environ.get("DLSCALE_MULTI_DIR", "/var/tmp/dlscale-slurm-multi"))
MULTI_CONF = MULTI_STATE / "etc" / "slurm.conf"
MULTI_BRIDGE_ADDR = "198.18.0.1"


def multi_env(**extra: str) -> dict:
    """A login-node environment (no SLURM_* job variables) whose Slurm commands talk to the
    multi-node cluster: SLURM_CONF is its config. Jobs submitted with it inherit SLURM_CONF, so
    `srun` inside them reaches the same cluster."""
    return login_node_env(SLURM_CONF=str(MULTI_CONF), **extra)


def multi_node_names(count: int) -> list[str]:
    """dlscale-n1 .. dlscale-n<count>, the names multinode-up.sh gives the nodes."""
    return [f"dlscale-n{i}" for i in range(1, count + 1)]


def node_address(node: str) -> str:
    """The node's IPv4 address (198.18.0.(10+i) for dlscale-n<i>)."""
    return f"198.18.0.{10 + int(node.rsplit('n', 1)[1])}"


def node_tmpdir(node: str) -> Path:
    """The node-local scratch its TaskProlog exports to every task as SLURM_TMPDIR."""
    return MULTI_STATE / "nodes" / node / "tmp"


def node_netns(node: str) -> int:
    """Inode of the node's network namespace (/run/netns/<node>); FileNotFoundError if none."""
    return os.stat(f"/run/netns/{node}").st_ino


def live_processes():
    """(pid, raw command line) of every live process but this one. Zombies and kernel threads
    (no command line) and processes that exit meanwhile are left out."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if cmdline:
            yield int(entry.name), cmdline


def processes_on_node(node: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process in the node's network namespace, sorted by pid:
    its slurmd, job steps and whatever they started (JVMs...)."""
    ino = node_netns(node)
    found = []
    for pid, cmdline in live_processes():
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == ino:
                found.append((pid, command_line(cmdline)))
        except OSError:
            continue
    return sorted(found)


# --- Faults injected into a study run with `snakemake --profile slurm` (test_slurm_walltime.py,
# test_slurm_requeue.py, test_head_wrapper.py) -------------------------------------------------
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
STUDY_SIZE = 256  # records of the one training-set size of these studies
# Cap of the executor's poll interval in the tests: it grows by 10 s per check while no job ends
# (3, 13, 23, 33... s after the first), so a job that had ended waited up to that long to be seen
# (measured: 19 s of a walltime cell, 20 s of a requeued one). The tests check what ends and in
# which order, never when; a 5 s poll is one sacct call per 5 s on the test cluster.
POLL_CAP = ["--dlscale-slurm-max-seconds-between-status-checks", "5"]
# The profile as a test runs it: the test node's partition and account, fast polls (the
# executor's own option spelling), one job at a time (at most 2 real CPUs allocated).
FAULT_STUDY_OVERRIDES = [
    "--default-resources", "slurm_partition=debug", "slurm_account=root",
    "--dlscale-slurm-init-seconds-before-status-checks", "3", *POLL_CAP, "--latency-wait", "5", "--jobs", "1",
]
TRAINING_STARTED = "[Epoch 1 "  # BigDL's optimizer logs each iteration at INFO
_prepared_data: dict[str, Path] = {}  # one prepared workdir per test session


def study_config(workdir: Path, cores: list[int], repetitions: int = 1, epochs: int = 1,
                 exclusive: bool = False, size: int = STUDY_SIZE, **sections: dict) -> Path:
    """test-config.yaml of a tiny study on Fashion-MNIST (offline): one size, the given cores,
    and any further config ``sections`` (e.g. ``slurm={"cores_per_node": 1}``). Cells share the
    single-node test cluster's node (``exclusive``: whole-node jobs would get all 4 CPUs it
    declares on a 2-CPU machine, tests/slurm/README.md quirk 1)."""
    import yaml

    config = {
        "dataset": {"name": "fashion-mnist", "dir": str(FASHION_MNIST)},
        "grid": {"sizes": [size], "cores": cores, "repetitions": repetitions},
        "training": {"test_size": 300, "epochs": epochs},
        "partition": {"files": 2},
        "measurement": {"exclusive": exclusive},
        **sections,
    }
    path = workdir / "test-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cell_paths(workdir: Path, cores: int = 1, rep: int = 1) -> tuple[Path, Path]:
    """(metrics.json, cell log) of one cell of a study_config study."""
    cell = f"fashion-mnist/bigdl/strong/n{STUDY_SIZE}/c{cores}/r{rep}"
    return workdir / "results/cells" / cell / "metrics.json", workdir / "results/logs/cells" / f"{cell}.log"


def prepared_study(tmp_path_factory, name: str, cores: list[int], repetitions: int = 1, epochs: int = 1,
                   exclusive: bool = False) -> Path:
    """A new study workdir whose data (resources/) is already prepared: made once per session with
    the local executor (the data jobs are not what these tests are about) and copied with its
    mtimes, so Snakemake sees it up to date and submits only cells (and tables) to Slurm."""
    if "source" not in _prepared_data:
        source = tmp_path_factory.mktemp("prepared-data")
        study_config(source, [1])
        targets = [f"resources/fashion-mnist/subsets/n{STUDY_SIZE}", "resources/fashion-mnist/test"]
        res = run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(source), "--configfile",
                   str(source / "test-config.yaml"), "--cores", "1", *targets], timeout=600, env=login_node_env())
        if res.returncode != 0:
            pytest.fail(f"preparing the test data failed:\n{(res.stdout + res.stderr)[-3000:]}")
        _prepared_data["source"] = source
    workdir = tmp_path_factory.mktemp(name)
    import shutil

    shutil.copytree(_prepared_data["source"] / "resources", workdir / "resources")
    study_config(workdir, cores, repetitions, epochs, exclusive)
    return workdir


def profile_command(workdir: Path, *extra: str) -> list[str]:
    """`snakemake --profile slurm` as a user types it, pointed at a test workdir."""
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--profile", str(REPO / "slurm"),
            "--configfile", str(workdir / "test-config.yaml"), *FAULT_STUDY_OVERRIDES, *extra]


class LogHistory:
    """Every run's last seen text of a log file that each run truncates (a cell's log: the rule
    writes it with `>`), so that the first run's log survives the retry. Call poll() often."""

    def __init__(self, path: Path):
        self.path = path
        self.runs: list[str] = []

    def poll(self) -> str:
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return ""
        if not text:
            return ""
        if self.runs and text.startswith(self.runs[-1][: min(len(text), 200)]):
            self.runs[-1] = text if len(text) >= len(self.runs[-1]) else self.runs[-1]
        else:
            self.runs.append(text)
        return text


def run_with_events(command: list[str], step, timeout: float = 1200, env: dict | None = None,
                    poll_s: float = 0.5) -> subprocess.CompletedProcess:
    """Run ``command`` and call ``step()`` every ``poll_s`` while it runs (the test's eyes and
    hands: it reads logs and injects faults); fail if it does not end within ``timeout``."""
    proc = subprocess.Popen(command, env=env or login_node_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    import threading

    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.terminate()  # the profile's executor cancels this run's jobs on SIGTERM
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                reader.join(10)
                pytest.fail(f"the study did not end within {timeout:.0f} s:\n{''.join(chunks)[-4000:]}")
            step()
            time.sleep(poll_s)
        step()
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    reader.join(30)
    return subprocess.CompletedProcess(command, proc.returncode, "".join(chunks), "")


def run_uuid(output: str) -> str:
    """The run id Snakemake's Slurm executor names every job of the run with (sbatch --job-name)."""
    m = re.search(r"SLURM run ID: (\S+)", output)
    assert m, f"no SLURM run ID in the output:\n{output[-3000:]}"
    return m.group(1)


def squeue_jobs(name: str) -> list[dict]:
    """The controller's view of the jobs named ``name`` (a run id): id, state, reason, comment."""
    res = run(["squeue", "-h", "--states=all", "--name", name, "-o", "%i|%T|%r|%k"])
    keys = ["JobID", "State", "Reason", "Comment"]
    return [dict(zip(keys, line.split("|", 3))) for line in res.stdout.splitlines() if "|" in line]


def sacct_records(job_id: str, fields: str = "JobID,State,Start,End,Timelimit,NodeList") -> list[dict]:
    """Every accounting record of a job, older runs of a requeued job included (sacct -D)."""
    names = fields.split(",")
    res = run(["sacct", "-X", "-D", "-P", "-n", f"--format={fields}", "-j", job_id])
    return [dict(zip(names, line.split("|"))) for line in res.stdout.splitlines() if line]


def processes_using(path: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line, environment or working
    directory names ``path`` (a cell's scratch: its Spark master, worker, executors and driver
    have it in SPARK_CONF_DIR / SPARK_LOCAL_DIRS, the trainer runs in it)."""
    needle = path.encode()
    found = []
    for pid, cmdline in live_processes():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd").encode()
        except OSError:
            cwd = b""
        if needle in cmdline or needle in read_proc(pid, "environ") or cwd.startswith(needle):
            found.append((pid, command_line(cmdline)))
    return sorted(found)


def wait_gone(path: str, timeout: float = 60) -> list[tuple[int, str]]:
    """Wait (bounded) until no process uses ``path`` and it no longer exists; what is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = processes_using(path)
        if not left and not os.path.exists(path):
            return []
        time.sleep(1)
    left = processes_using(path)
    return left + ([(0, f"{path} still exists")] if os.path.exists(path) else [])


def scratch_of(log_text: str) -> str:
    """The cell's private scratch directory, from its log's first line."""
    m = re.search(r"scratch (\S*dlscale-cell-\S+)", log_text)
    assert m, f"no scratch directory in the cell log:\n{log_text[:2000]}"
    return m.group(1)


def job_step_daemons(job: str) -> list[int]:
    """Pids of the slurmstepd processes of Slurm job ``job`` on this machine
    (`slurmstepd: [<job>.batch]`, `[<job>.0]`, `[<job>.extern]`)."""
    prefix = f"slurmstepd: [{job}.".encode()
    return [pid for pid, cmdline in live_processes() if cmdline.startswith(prefix)]


def job_processes(job: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process on this machine that runs for Slurm job ``job``
    (SLURM_JOB_ID=<job> in its environment: the batch script, its snakemake, the job's steps and
    what they started)."""
    needle = f"SLURM_JOB_ID={job}".encode()
    return sorted((pid, command_line(cmdline)[:300]) for pid, cmdline in live_processes()
                  if needle in read_proc(pid, "environ").split(b"\0"))


def wait_no_job_processes(job: str, timeout: float = 60) -> list[tuple[int, str]]:
    """Wait (bounded) until no process of Slurm job ``job`` runs here; what is left."""
    deadline = time.monotonic() + timeout
    while (left := job_processes(job)) and time.monotonic() < deadline:
        time.sleep(1)
    return left


def kill_leftovers(job: str, processes: list[tuple[int, str]]) -> None:
    """SIGKILL the processes a test's own Slurm job left behind (as job_processes found them and
    the test recorded them), those of them that still run for that job, so that they do not
    outlive the test."""
    import signal

    still = {pid for pid, _ in job_processes(job)}
    for pid, _ in processes:
        if pid in still:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
