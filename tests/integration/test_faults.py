"""Faults, for real: cells of one small study are broken while they run, through the real
`snakemake` command, and each fault must end the same way: the cell fails with a clear message in
its log, nothing of its transient Spark cluster keeps running (checked by the cell's process tree,
by its cluster tag and by command line), its scratch is gone, its ports are free, no metrics.json
is written; and running the same command again then completes the cells.

Every fault comes from outside the cell, as it would in production: a signal, a killed JVM, a
closed terminal, a damaged file. One study (fashion-mnist, sizes 256 and 512 then 1024, one core
each, two cells at a time):

1. n256: the trainer's driver JVM (SparkSubmit) is SIGKILLed once both data sets are loaded, its
   executor running (as the OOM killer would); n512: the cell is SIGKILLed mid-training (no
   teardown code runs: the kernel's parent-death signal must still take its daemons down; its
   scratch stays until the next cell sweeps it).
2. n256: SIGTERM mid-training (what scancel and the walltime send), then more SIGTERMs during
   the teardown; n512: its Spark worker JVM is SIGKILLed mid-training. Only this round runs
   bin/spark-class master and worker daemons (``spark.single_node_cluster: daemons``, what every
   node of a multi-node cell runs); the others run the default, both inside the driver JVM.
3. n256: SIGINT (Ctrl-C), n512: SIGUSR1 (the walltime warning), each the first signal the cell
   gets, once its executor runs: the same teardown as SIGTERM.
4. n256 started by hand in an interactive shell on a terminal that closes, as a dropped ssh
   session does (the shell passes SIGHUP on to its jobs): the same teardown. n512 (through
   Snakemake) reads its subset's images (``_images.npy``) cut in half: the executor's Python
   worker fails, Spark's own error fails the trainer, and the executor's log tail in the cell's
   log shows it. The file is restored afterwards.
5. the same command again: both cells succeed side by side (no shared ports, scratch, log or
   CPU: the collision test of the local executor).
6. the whole study: the n1024 cell starts; Snakemake is SIGKILLed mid-training; the orphaned cell
   stops itself; the same command is refused (Snakemake's locks) until `snakemake --unlock`, then
   finishes the study, the earlier cells byte-identical.
7. later runs never rewrite a completed cell: not when settings change, not when the data is
   prepared again, not when the grid grows; only when asked (--forcerun / deleting metrics.json).

A cell started with SIGHUP ignored (nohup) keeps running when its terminal closes (no cluster:
it waits for CPUs the test holds).

The Slurm variant (two cells as two Slurm jobs on the one test node) runs against the local Slurm
of tests/slurm/slurm-up.sh and skips when no controller answers, unless DLSCALE_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml

from dlscale.paths import SUBSET_ARRAYS
from dlscale_testing import DRIVER_BIN, FASHION_MNIST, REPO, TRAINER_PYTHON, command_line, read_proc

pytestmark = pytest.mark.integration

DATASET = "fashion-mnist"
SMALL, OTHER, BIG, NEW = 256, 512, 1024, 128
TRAINING_STARTED = "[Epoch 1 "  # BigDL's optimizer logs each iteration at INFO (spark_node log4j2)


# --- processes, seen through /proc --------------------------------------------------------------
def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry)] = (int(fields[1]), int(fields[19]))
    return table


def descendants(root: int, table: dict[int, tuple[int, int]]) -> list[int]:
    children = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    found, stack = [], [root]
    while stack:
        for child in children[stack.pop()]:
            found.append(child)
            stack.append(child)
    return found


def cmdline(pid: int) -> str:
    return command_line(read_proc(pid, "cmdline"))


def cluster_tag(pid: int) -> Optional[str]:
    for item in read_proc(pid, "environ").split(b"\0"):
        if item.startswith(b"DLSCALE_CLUSTER_TAG="):
            return item.split(b"=", 1)[1].decode()
    return None


def listen_sockets() -> dict[int, tuple[str, int]]:
    """inode -> (local address hex, port) of every TCP socket in LISTEN state."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in list(handle)[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    address, port = fields[1].rsplit(":", 1)
                    found[int(fields[9])] = (address, int(port, 16))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def still_running(seen: dict[int, tuple[int, str]]) -> list[tuple[int, str]]:
    """The processes of ``seen`` (pid -> (start time, cmdline)) that still run (not zombies)."""
    table = proc_table()
    left = []
    for pid, (start, cmd) in seen.items():
        if table.get(pid, (0, None))[1] == start:
            state = read_proc(pid, "stat").rsplit(b")", 1)[-1].split()[:1]
            if state != [b"Z"]:
                left.append((pid, cmd))
    return left


def tagged(tags: set[str]) -> list[tuple[int, str]]:
    return [(pid, cmdline(pid)) for pid in proc_table() if cluster_tag(pid) in tags]


# --- which clusters were up at the same moment, by the order of reads of the cells' logs ------
# (daemons up; an in-driver cluster's are the driver's, which starts right after that line)
CLUSTER_UP = ("Spark standalone cluster up in", "Spark standalone master and worker to start in the driver JVM")
CLUSTER_STOPPED = "cluster stopped in"


def cluster_up(text: str) -> bool:
    """The log's cluster is up: started, not yet stopped (a log is rewritten when its cell runs)."""
    return any(marker in text for marker in CLUSTER_UP) and CLUSTER_STOPPED not in text


def up_at_once(read_logs: dict) -> set:
    """The keys of ``read_logs`` (key -> function returning the log text) whose clusters were all
    up at one moment. Each log is read twice, all of them in turn: a cluster seen up at both of
    its reads was up all the time between them (a log says up, then stopped, never back), so
    every cluster seen up twice was up at the moment of the last first read."""
    first = [key for key, read in read_logs.items() if cluster_up(read())]
    return {key for key in first if cluster_up(read_logs[key]())}


class LogOverlap(threading.Thread):
    """Reads the given logs until stopped; ``together`` is every set of two or more of them seen
    up at one moment."""

    def __init__(self, logs: dict) -> None:
        super().__init__(daemon=True)
        self.logs = logs
        self.together: set[frozenset] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        readers = {key: (lambda path=path: path.read_text(errors="replace") if path.exists() else "")
                   for key, path in self.logs.items()}
        while not self.halt.is_set():
            up = up_at_once(readers)
            if len(up) >= 2:
                self.together.add(frozenset(up))
            time.sleep(0.25)

    def __enter__(self) -> "LogOverlap":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.join(10)


# --- watching the cells of one Snakemake run ---------------------------------------------------
@dataclass
class CellRun:
    """What one run of one cell was seen doing."""

    size: int
    log: Path
    pid: Optional[int] = None
    seen: dict[int, tuple[int, str]] = field(default_factory=dict)  # pid -> (start, cmdline)
    tags: set[str] = field(default_factory=set)
    listen: dict[int, tuple[str, int]] = field(default_factory=dict)  # inode -> (address, port)
    done: list[str] = field(default_factory=list)  # the faults injected, in order
    lz4_libraries: list[str] = field(default_factory=list)  # lz4's native library as the killed driver mapped it
    frozen: Optional[str] = None  # the log as this run left it (a later run rewrites the file)
    up_together: set[int] = field(default_factory=set)  # cells whose clusters were up with this one

    def freeze(self) -> None:
        self.frozen = self.log_text()

    def log_text(self) -> str:
        if self.frozen is not None:
            return self.frozen
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def scratch(self) -> Optional[str]:
        match = re.search(r"scratch (\S+dlscale-cell-\S+)", self.log_text())
        return match.group(1) if match else None

    @property
    def master_url(self) -> Optional[str]:
        match = re.search(r"cluster up in [\d.]+ s at (spark://\S+)|in the driver JVM \((local-cluster\S+)\)",
                          self.log_text())
        return (match.group(1) or match.group(2)) if match else None

    def find(self, pattern: str) -> list[int]:
        """Pids seen whose command line matches."""
        return [pid for pid, (_, cmd) in self.seen.items() if re.search(pattern, cmd)]


# An action: (when, what) -> the watcher calls what(run) once, as soon as when(run) is true.
Action = tuple[Callable[[CellRun], bool], Callable[[CellRun], None]]


class Watcher(threading.Thread):
    """Follows every cell process running in ``workdir``: its whole process tree, their
    cluster tags and listening sockets; injects the faults it is given."""

    def __init__(self, workdir: Path, actions: dict[int, Action]):
        super().__init__(daemon=True)
        self.workdir, self.actions = workdir, dict(actions)
        self.cells: dict[int, CellRun] = {}
        self.errors: list[str] = []
        self.halt = threading.Event()

    def cell_log(self, size: int) -> Path:
        return self.workdir / f"results/logs/cells/{DATASET}/bigdl/strong/n{size}/c1/r1.log"

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.scan()
            except Exception as error:  # reported by the test, never swallowed
                self.errors.append(repr(error))
            time.sleep(0.25)

    def scan(self) -> None:
        table = proc_table()
        listening = listen_sockets()
        for pid in table:
            cmd = cmdline(pid)
            if "-m dlscale.cell" not in cmd or os.path.realpath(f"/proc/{pid}/cwd") != str(self.workdir):
                continue
            size = int(re.search(r"--size (\d+)", cmd).group(1))
            run = self.cells.setdefault(size, CellRun(size, self.cell_log(size)))
            run.pid = pid
            for child in [pid] + descendants(pid, table):
                start = table.get(child, (0, 0))[1]
                run.seen[child] = (start, cmdline(child) or run.seen.get(child, (0, ""))[1])
                tag = cluster_tag(child)
                if tag and child != pid:
                    run.tags.add(tag)
                for inode in socket_inodes(child) & listening.keys():
                    run.listen[inode] = listening[inode]
            if size in self.actions:
                when, what = self.actions[size]
                if when(run):
                    del self.actions[size]
                    what(run)
        up = up_at_once({size: run.log_text for size, run in self.cells.items()})
        for size in up:
            self.cells[size].up_together |= up - {size}

    def __enter__(self) -> "Watcher":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.join(10)


def training(run: CellRun) -> bool:
    return TRAINING_STARTED in run.log_text()


def executors_up(run: CellRun) -> bool:
    return bool(run.find("CoarseGrainedExecutorBackend"))


DATA_LOADED = re.compile(r"dlscale\.trainer: \S+: \d+ records in \d+ partitions")  # one line per data set


def data_loaded(run: CellRun) -> bool:
    """The trainer has read the training and the test set (cached by its executor)."""
    return len(DATA_LOADED.findall(run.log_text())) >= 2


# --- the faults --------------------------------------------------------------------------------
def kill_cell(run: CellRun) -> None:
    os.kill(run.pid, signal.SIGKILL)
    run.done.append("SIGKILL cell")


def terminate_cell_repeatedly(run: CellRun) -> None:
    """SIGTERM, then more of them while the cell tears down (Slurm signals every process of a
    job, users press Ctrl-C twice): the teardown must not be cut short."""
    os.kill(run.pid, signal.SIGTERM)
    run.done.append("SIGTERM cell")

    def more() -> None:
        for delay in (0.3, 0.7, 1.0, 1.5):
            time.sleep(delay)
            try:
                os.kill(run.pid, signal.SIGTERM)
                run.done.append("SIGTERM cell again")
            except ProcessLookupError:
                return

    threading.Thread(target=more, daemon=True).start()


def kill_worker(run: CellRun) -> None:
    workers = run.find(r"org\.apache\.spark\.deploy\.worker\.Worker")
    assert workers, f"no worker JVM among {sorted(run.seen)}"
    os.kill(workers[0], signal.SIGKILL)
    run.done.append("SIGKILL worker %d" % workers[0])


def kill_driver(run: CellRun) -> None:
    """SIGKILL the driver JVM (spark-submit's SparkSubmit; not the launcher JVM that built its
    command line) that runs the trainer's SparkContext."""
    drivers = [pid for pid in run.find(r"java .*org\.apache\.spark\.deploy\.SparkSubmit ")
               if "org.apache.spark.launcher.Main" not in run.seen[pid][1] and still_running({pid: run.seen[pid]})]
    assert len(drivers) == 1, f"expected one driver JVM: {[(pid, run.seen[pid][1][:200]) for pid in drivers]}"
    # where the JVM extracted lz4's native library (java.io.tmpdir): a SIGKILLed JVM cannot delete it
    maps = read_proc(drivers[0], "maps").decode(errors="replace").splitlines()
    run.lz4_libraries = sorted({line.split()[-1] for line in maps if "liblz4-java" in line})
    os.kill(drivers[0], signal.SIGKILL)
    run.done.append("SIGKILL driver %d" % drivers[0])


def send(signum: signal.Signals) -> Callable[[CellRun], None]:
    def action(run: CellRun) -> None:
        os.kill(run.pid, signum)
        run.done.append(signum.name)

    return action


class Terminal:
    """An interactive bash on a pseudo-terminal of its own (its controlling terminal), as in an ssh
    session. ``hang_up`` closes the terminal as a dropped connection does: the kernel sends the
    shell SIGHUP, and the shell passes it on to its jobs before it exits."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.shell = subprocess.Popen(["setsid", "--ctty", "bash", "--norc", "--noprofile", "-i"], stdin=slave,
                                      stdout=slave, stderr=slave, cwd=cwd, env={**env, "PS1": "$ "})
        os.close(slave)
        self.screen = bytearray()
        self.halt = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        # Never a blocking read: a read in progress keeps the terminal open after close().
        while not self.halt.is_set():
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.screen += os.read(self.master, 4096)
                except OSError:
                    return

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def hang_up(self) -> int:
        """Close the terminal; the shell's exit status (-SIGHUP: the hangup reached it)."""
        if not self.halt.is_set():
            self.halt.set()
            self.reader.join()
            os.close(self.master)
        return self.shell.wait(60)


def cell_command(python: str, size: int, out: Path, log: Path) -> str:
    """The command line of a 1-core cell, as the train_cell rule runs it (without Snakemake)."""
    return (f"{python} -m dlscale.cell --dataset {DATASET} --size {size} --cores 1 --repetition 1 "
            f"--train-dir resources/{DATASET}/subsets/n{size} --test-dir resources/{DATASET}/test --out {out} "
            f"--executor-memory 1g --driver-memory 1g --worker-memory 1g > {log} 2>&1")


def failed_lines(log: str) -> list[str]:
    """What the cell's FAILED lines say, one item per line."""
    return re.findall(r"dlscale\.cell ERROR cell \S+ n\d+ c\d+ r\d+ FAILED: (.*?)\. Its Spark cluster was stopped", log)


def executor_log_tails(log: str, stream: str = "stderr") -> list[str]:
    """The tails of the executors' ``stream`` (stderr: the JVM's and Python workers' output; stdout:
    the executor's Spark log) that the cell copied into its log (dlscale.spark_node.show_log_tails;
    their files went with its scratch), each without its header and the cell's own lines after it."""
    parts = re.split(r"^----- last \d+ lines of (\S+) -----\n", log, flags=re.M)
    tails = []
    for name, body in zip(parts[1::2], parts[2::2]):
        if re.fullmatch(r"work/app-[^/]+/\d+/" + stream, name):
            tails.append(re.split(r"^\S+ \S+ dlscale\.cell ", body, maxsplit=1, flags=re.M)[0])
    return tails


STOPPED_BY = "received {} (scancel, the walltime, Ctrl-C or a stopped workflow)"


# --- the study ---------------------------------------------------------------------------------
@dataclass
class Study:
    workdir: Path
    env: dict[str, str]
    scratch: Path
    started: float = field(default_factory=time.time)

    def command(self, *targets: str) -> list[str]:
        return [str(DRIVER_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(self.workdir),
                "--workflow-profile", str(REPO / "workflow" / "profiles" / "default"),
                "--configfile", str(self.workdir / "test-config.yaml"), "--cores", "2", *targets]

    def snakemake(self, *targets: str, extra_env: Optional[dict] = None, timeout: float = 1200):
        env = {**self.env, **(extra_env or {})}
        return subprocess.run(self.command(*targets), env=env, capture_output=True, text=True, timeout=timeout)

    def metrics(self, size: int) -> Path:
        return self.workdir / f"results/cells/{DATASET}/bigdl/strong/n{size}/c1/r1/metrics.json"

    def set_config(self, **changes) -> None:
        path = self.workdir / "test-config.yaml"
        config = yaml.safe_load(path.read_text())
        for key, value in changes.items():
            config[key] = {**config.get(key, {}), **value}
        path.write_text(yaml.safe_dump(config))


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def study(tmp_path_factory, trainer_python) -> Study:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Debian's dataset-fashion-mnist is missing: run `make fashion-mnist`")
    workdir = tmp_path_factory.mktemp("faults").resolve()
    config = {
        "dataset": {"name": DATASET, "dir": str(FASHION_MNIST)},
        "grid": {"sizes": [SMALL, OTHER], "cores": [1], "repetitions": 1},
        "training": {"test_size": 500},
        "partition": {"files": 2},
        "spark": {"executor_memory": "1g", "driver_memory": "1g", "worker_memory": "1g"},
        # the two 1-core cells side by side (the default runs timed cells one at a time)
        "measurement": {"exclusive": False},
    }
    (workdir / "test-config.yaml").write_text(yaml.safe_dump(config))
    scratch = workdir / "scratch"
    scratch.mkdir()
    # Private CPU claims and scratch: other cells on this machine neither block nor see ours.
    env = {**os.environ, "DLSCALE_SCRATCH": str(scratch), "DLSCALE_CPU_LOCK_DIR": str(workdir / "cpu-locks")}
    made = Study(workdir, env, scratch)
    data = [f"resources/{DATASET}/subsets/n{size}" for size in (SMALL, OTHER, BIG)] + [f"resources/{DATASET}/test"]
    proc = made.snakemake(*data)
    assert proc.returncode == 0, output(proc)[-4000:]
    return made


def run_with_faults(study: Study, actions: dict[int, Action], *targets: str, extra_env=None):
    with Watcher(study.workdir, actions) as watcher:
        proc = study.snakemake(*targets, extra_env=extra_env)
    for run in watcher.cells.values():
        run.freeze()
    assert not watcher.errors, watcher.errors
    assert not watcher.actions, f"faults never injected (cells never reached them): {list(watcher.actions)}\n" \
        + output(proc)[-3000:]
    return proc, watcher.cells


def cell_targets(study: Study) -> list[str]:
    return [str(study.metrics(size).relative_to(study.workdir)) for size in (SMALL, OTHER)]


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def assert_nothing_left(run: CellRun, scratch_removed: bool = True, daemons: bool = False) -> None:
    """No process of the cell, by its process tree, its cluster tag or its command line; its
    ports free; its scratch gone; no metrics (not even a temp file). ``daemons``: the cell ran
    bin/spark-class master and worker JVMs; otherwise its driver JVM held them (in-driver)."""
    assert run.seen, "the watcher never saw the cell"
    assert run.tags, "the cell's cluster tag was never seen: the check by tag would prove nothing"
    seen_daemons = [run.find(r"deploy\.master\.Master"), run.find(r"deploy\.worker\.Worker")]
    if daemons:
        assert all(seen_daemons), "daemons never seen"
    else:
        assert not any(seen_daemons) and run.find("SparkSubmit"), "not an in-driver cluster: %s" % seen_daemons
    wait_until(lambda: not still_running(run.seen), 30)
    assert not still_running(run.seen), f"processes of the cell still running: {still_running(run.seen)}"
    assert tagged(run.tags) == [], f"processes still carry the cell's cluster tag: {tagged(run.tags)}"
    scratch = run.scratch
    assert scratch, "the cell's log names no scratch directory"
    by_cmdline = [(pid, cmdline(pid)) for pid in proc_table() if scratch in cmdline(pid)]
    assert by_cmdline == [], f"processes still name the cell's scratch {scratch}: {by_cmdline}"
    assert run.listen, "no listening socket of the cell was seen: the port check would prove nothing"
    # A JVM whose main thread is already a zombie still holds its sockets until its last thread
    # (shutdown hooks) exits: give the kernel the same bounded time as the processes.
    wait_until(lambda: not set(run.listen) & set(listen_sockets()), 30)
    still = listen_sockets()
    assert not set(run.listen) & set(still), "sockets of the cell still listen"
    ports = {port for _, port in run.listen.values()}
    assert not ports & {port for _, port in still.values()}, f"ports of the cell still listening: {ports}"
    if scratch_removed:
        assert not os.path.exists(scratch), f"scratch {scratch} left behind"


# What a cell's driver and executor JVMs would write outside their scratch if left to their
# defaults: java.io.tmpdir's /tmp (lz4's native library, which a killed JVM cannot delete; Spark's
# temporary folders) and the file BigDL's own log4j2-test.xml appends to.
JVM_FILES_IN_TMP = ("liblz4-java-*", "snappy-*", "blockmgr-*", "spark-*", "${sys:logFilename}")


def jvm_files_in_tmp(since: float) -> list[str]:
    """Such files in /tmp written since ``since`` (the study's start; nothing else runs cells meanwhile)."""
    paths = (path for pattern in JVM_FILES_IN_TMP for path in glob.glob(os.path.join("/tmp", pattern)))
    return sorted(path for path in paths if os.path.lexists(path) and os.lstat(path).st_mtime >= since)


def assert_no_metrics(study: Study, size: int) -> None:
    folder = study.metrics(size).parent
    assert not study.metrics(size).exists()
    assert not folder.exists() or list(folder.iterdir()) == [], list(folder.iterdir())


# --- 1. a dead driver JVM and SIGKILL of a cell -----------------------------------------------
@pytest.fixture(scope="module")
def first_faults(study):
    proc, cells = run_with_faults(
        study,
        {SMALL: (data_loaded, kill_driver), OTHER: (training, kill_cell)},
        *cell_targets(study),
    )
    return proc, cells


def test_a_dead_driver_fails_the_cell_clearly_and_leaves_nothing(study, first_faults):
    proc, cells = first_faults
    assert proc.returncode != 0
    run = cells[SMALL]
    assert len(run.done) == 1 and run.done[0].startswith("SIGKILL driver"), run.done
    log = run.log_text()
    assert executors_up(run) and len(DATA_LOADED.findall(log)) == 2  # killed after the data load
    assert failed_lines(log) == ["the trainer failed (spark-submit exit code -9); its output is above"], log[-3000:]
    assert re.search(r"FAILED: the trainer failed .*no metrics were written; rerun the workflow", log)
    # the executor's logs outlive the scratch (an in-driver cluster has no daemon logs: its
    # master and worker logged in the driver's output, above)
    assert "Spark standalone master and worker to start in the driver JVM (local-cluster[1,1,1024])" in log
    tails = executor_log_tails(log)
    assert len(tails) == 1 and tails[0].strip(), log[-5000:]
    assert_nothing_left(run)  # also the trainer's Python, orphaned by its JVM
    # The killed driver's temporary files were in its scratch, removed with it; none in /tmp
    # (java.io.tmpdir's default), nor BigDL's log file (spark_node.BIGDL_JVM_OPTS).
    assert run.lz4_libraries, "the driver had not loaded lz4's library: the check of /tmp would prove nothing"
    assert all(path.startswith(run.scratch + "/") for path in run.lz4_libraries), run.lz4_libraries
    assert jvm_files_in_tmp(study.started) == []
    assert_no_metrics(study, SMALL)
    # Snakemake shows the user which cell failed and its log
    assert "Error in rule train_cell" in output(proc) and str(run.log.relative_to(study.workdir)) in output(proc)


def test_sigkill_of_a_cell_still_takes_its_cluster_down(study, first_faults):
    proc, cells = first_faults
    run = cells[OTHER]
    assert run.done == ["SIGKILL cell"]
    log = run.log_text()
    assert TRAINING_STARTED in log  # it was killed mid-training
    # BigDL logs through the cell's log4j 2 configuration (Spark's line format), not its jar's
    # log4j2-test.xml ("yy-MM-dd HH:mm:ss [thread] INFO  Class:line -"), whose file is in /tmp
    assert re.search(r"^\d\d:\d\d:\d\d INFO DistriOptimizer\$: \[Epoch 1 ", log, re.M), log[-3000:]
    assert not re.search(r"^\d\d-\d\d-\d\d \d\d:\d\d:\d\d \[", log, re.M), log[-3000:]
    # No teardown code could run: the kernel's parent-death signal stops the driver, and the
    # worker inside it takes its executor down.
    assert_nothing_left(run, scratch_removed=False)
    assert os.path.isdir(run.scratch), "expected the scratch of a SIGKILLed cell to stay until the next cell"
    assert jvm_files_in_tmp(study.started) == []
    assert_no_metrics(study, OTHER)


# --- 2. SIGTERM (scancel, walltime) and a dead worker JVM ---------------------------------------
@pytest.fixture(scope="module")
def second_faults(study, first_faults):
    # bin/spark-class daemons (what every multi-node cell runs), whose worker JVM can die alone
    study.set_config(spark={"single_node_cluster": "daemons"})
    try:
        return run_with_faults(
            study,
            {SMALL: (training, terminate_cell_repeatedly), OTHER: (training, kill_worker)},
            *cell_targets(study),
        )
    finally:
        study.set_config(spark={"single_node_cluster": "in-driver"})


def test_sigterm_stops_the_cell_with_a_full_teardown(study, second_faults):
    proc, cells = second_faults
    assert proc.returncode != 0
    run = cells[SMALL]
    assert run.done[0] == "SIGTERM cell" and len(run.done) >= 2, run.done  # signals hit the teardown too
    log = run.log_text()
    assert "FAILED: received SIGTERM (scancel, the walltime, Ctrl-C or a stopped workflow)" in log
    assert "SIGTERM ignored: the cell is already stopping" in log
    assert "cluster stopped in" in log
    assert_nothing_left(run, daemons=True)
    assert_no_metrics(study, SMALL)


def test_dead_worker_jvm_fails_the_cell_clearly(study, second_faults):
    proc, cells = second_faults
    run = cells[OTHER]
    assert run.done and run.done[0].startswith("SIGKILL worker")
    log = run.log_text()
    assert re.search(r"FAILED: the Spark worker on %s \(pid \d+\) died \(killed by SIGKILL\) while the trainer ran"
                     % re.escape(socket.gethostname()), log), log[-3000:]
    # the daemons' logs outlive the scratch (dlscale.cluster names each worker after its node)
    assert "----- last" in log and f"logs/worker-on-{socket.gethostname()}.log" in log, log[-3000:]
    assert_nothing_left(run, daemons=True)
    assert_no_metrics(study, OTHER)


def test_the_next_cell_removes_the_scratch_of_a_killed_one(study, first_faults, second_faults):
    killed = first_faults[1][OTHER].scratch
    assert not os.path.exists(killed)
    assert f"removing {killed}, left behind by a cell that was killed" in "".join(
        run.log_text() for run in second_faults[1].values())


# --- 3. SIGINT and SIGUSR1 as the first signal ------------------------------------------------
@pytest.fixture(scope="module")
def signal_faults(study, second_faults):
    return run_with_faults(
        study,
        {SMALL: (executors_up, send(signal.SIGINT)), OTHER: (executors_up, send(signal.SIGUSR1))},
        *cell_targets(study),
    )


@pytest.mark.parametrize("size, name", [(SMALL, "SIGINT"), (OTHER, "SIGUSR1")])
def test_sigint_or_sigusr1_first_stops_the_cell_like_sigterm(study, signal_faults, size, name):
    proc, cells = signal_faults
    assert proc.returncode != 0
    run = cells[size]
    assert run.done == [name]
    log = run.log_text()
    assert failed_lines(log) == [STOPPED_BY.format(name)], log[-3000:]
    assert "cluster stopped in" in log
    assert_nothing_left(run)
    assert_no_metrics(study, size)


# --- 4. a closed terminal (SIGHUP), and damaged input data ------------------------------------
@pytest.fixture(scope="module")
def hangup_faults(study, signal_faults, trainer_python):
    """n256 by hand in a terminal that closes once its executor runs; meanwhile n512 through
    Snakemake on its subset's images cut in half."""
    part = study.workdir / f"resources/{DATASET}/subsets/n{OTHER}" / SUBSET_ARRAYS[0]
    original, stat = part.read_bytes(), part.stat()
    terminal = Terminal(study.workdir, {**study.env, "PYTHONPATH": str(REPO / "src")})
    shell_status = []

    def hang_up(run: CellRun) -> None:
        shell_status.append(terminal.hang_up())
        run.done.append("terminal closed")

    try:
        with Watcher(study.workdir, {SMALL: (executors_up, hang_up)}) as watcher:
            log = watcher.cell_log(SMALL)
            log.parent.mkdir(parents=True, exist_ok=True)
            terminal.type(cell_command(trainer_python, SMALL, study.metrics(SMALL), log))
            with open(part, "r+b") as handle:
                handle.truncate(len(original) // 2)
            proc = study.snakemake(cell_targets(study)[1])

            def hung_up_and_gone() -> bool:  # the hand-started cell
                run = watcher.cells.get(SMALL)
                return bool(run and run.done and not still_running({run.pid: run.seen[run.pid]}))

            assert wait_until(hung_up_and_gone, 900), \
                f"the terminal's cell never ran or never stopped: {bytes(terminal.screen)[-2000:]!r}"
        assert not watcher.errors, watcher.errors
    finally:
        terminal.hang_up()
        part.write_bytes(original)
        os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    for run in watcher.cells.values():
        run.freeze()
    return proc, watcher.cells, shell_status


def test_a_closed_terminal_stops_the_cell_like_sigterm(study, hangup_faults):
    _, cells, shell_status = hangup_faults
    run = cells[SMALL]
    assert run.done == ["terminal closed"] and shell_status == [-signal.SIGHUP], (run.done, shell_status)
    log = run.log_text()
    assert failed_lines(log) == [STOPPED_BY.format("SIGHUP")], log[-3000:]
    assert "cluster stopped in" in log
    assert_nothing_left(run)
    assert_no_metrics(study, SMALL)


def test_damaged_input_data_fails_the_trainer_with_sparks_error_and_the_executors_log(study, hangup_faults):
    proc, cells, _ = hangup_faults
    assert proc.returncode != 0
    run = cells[OTHER]
    log = run.log_text()
    assert failed_lines(log) == ["the trainer failed (spark-submit exit code 1); its output is above"], log[-3000:]
    assert "Traceback (most recent call last)" in log and "Py4JJavaError" in log  # the trainer's own error
    # the tails of the executor's stderr and of its Spark log (its stdout) are in the cell's log;
    # the Spark log ends with its Python worker's error, which names the damage: the file is
    # shorter than its header says
    assert len(executor_log_tails(log)) == 1, log[-5000:]
    spark_logs = executor_log_tails(log, "stdout")
    assert len(spark_logs) == 1, log[-5000:]
    assert "pyspark/worker.py" in spark_logs[0] and "mmap length is greater than file size" in spark_logs[0], \
        spark_logs[0]
    assert_nothing_left(run)
    assert_no_metrics(study, OTHER)
    assert "Error in rule train_cell" in output(proc) and str(run.log.relative_to(study.workdir)) in output(proc)


def held_signals(pid: int, field: str) -> int:
    """The signal mask ``field`` (SigIgn, SigCgt) of process ``pid``, from /proc."""
    for line in read_proc(pid, "status").decode().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    return 0


def has(mask: int, signum: signal.Signals) -> bool:
    return bool(mask >> (signum - 1) & 1)


def test_a_closed_terminal_does_not_stop_a_cell_started_with_nohup(tmp_path, trainer_python):
    """Two cells from one terminal, one under nohup, both waiting for CPUs the test holds (no
    cluster starts): the terminal closes; the plain one stops (SIGHUP), the nohup one goes on
    waiting until it gets SIGTERM (if it had taken the earlier SIGHUP, its FAILED line would
    name SIGHUP)."""
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    held = []
    for cpu in sorted(os.sched_getaffinity(0)):
        fd = os.open(locks / f"cpu{cpu}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(fd)
    # the cells check their data folders before they queue for CPUs: folders with (empty) arrays
    for folder in (f"resources/{DATASET}/subsets/n{SMALL}", f"resources/{DATASET}/test"):
        (tmp_path / folder).mkdir(parents=True)
        for name in SUBSET_ARRAYS:
            (tmp_path / folder / name).touch()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "DLSCALE_CPU_LOCK_DIR": str(locks),
           "DLSCALE_SCRATCH": str(tmp_path)}
    terminal = Terminal(tmp_path, env)
    cells: dict[str, int] = {}
    try:
        # the nohup one in the background, the plain one in the foreground: the shell waits for it
        # (an idle shell at its prompt may read the hangup as end of input and exit without
        # passing SIGHUP on to its background jobs)
        for name, before, after in (("nohup", "nohup ", " &"), ("plain", "", "")):
            command = cell_command(trainer_python, SMALL, tmp_path / name / "metrics.json", tmp_path / f"{name}.log")
            terminal.type(f"{before}{command}{after}")

        def started() -> bool:
            for pid in proc_table():
                match = re.search(r"-m dlscale\.cell .*--out \S+/(nohup|plain)/metrics\.json", cmdline(pid))
                if match and str(tmp_path) in cmdline(pid):
                    cells[match.group(1)] = pid
            # its signal handlers are in place (dlscale.cell.main)
            return len(cells) == 2 and all(has(held_signals(pid, "SigCgt"), signal.SIGTERM) for pid in cells.values())

        assert wait_until(started, 120), (cells, bytes(terminal.screen)[-2000:])
        assert has(held_signals(cells["nohup"], "SigIgn"), signal.SIGHUP)
        assert has(held_signals(cells["plain"], "SigCgt"), signal.SIGHUP)
        assert terminal.hang_up() == -signal.SIGHUP
        table = proc_table()
        seen = {name: {pid: (table[pid][1], "")} for name, pid in cells.items()}  # pid -> (start, cmdline)
        assert wait_until(lambda: not still_running(seen["plain"]), 60), "the plain cell did not stop"
        assert still_running(seen["nohup"]), "the nohup cell stopped with its terminal"
        os.kill(cells["nohup"], signal.SIGTERM)
        assert wait_until(lambda: not still_running(seen["nohup"]), 60)
    finally:
        terminal.hang_up()
        for pid in cells.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for fd in held:
            os.close(fd)
    assert failed_lines((tmp_path / "plain.log").read_text()) == [STOPPED_BY.format("SIGHUP")]
    assert failed_lines((tmp_path / "nohup.log").read_text()) == [STOPPED_BY.format("SIGTERM")]
    assert not (tmp_path / "plain").exists() and not (tmp_path / "nohup").exists()


# --- 5. the same command again: both succeed, side by side -------------------------------------
@pytest.fixture(scope="module")
def retried(study, hangup_faults):
    proc, cells = run_with_faults(study, {}, *cell_targets(study))
    assert proc.returncode == 0, output(proc)[-4000:]
    return proc, cells


def test_retry_after_the_faults_succeeds(study, retried):
    for size in (SMALL, OTHER):
        metrics = json.loads(study.metrics(size).read_text())
        assert metrics["size"] == size and metrics["train_records"] == size
        assert 0.15 < metrics["test_accuracy"] <= 1.0
        # thread settings as the driver and BigDL's engine had them, not as the cell asked
        threads = metrics["threads"]
        assert threads["bigdl_model_replicas"] == metrics["cores"] == threads["spark.executor.cores"], threads
        assert "-XX:TieredStopAtLevel=1" in threads["spark.driver.extraJavaOptions"], threads
    assert sorted(os.listdir(study.scratch)) == []  # every scratch removed, the killed cell's too


def test_two_cells_at_once_do_not_collide(study, retried):
    _, cells = retried
    small, other = (json.loads(study.metrics(size).read_text()) for size in (SMALL, OTHER))
    a, b = cells[SMALL], cells[OTHER]
    # their clusters were up at the same moment (seen in the order of reads of their logs) ...
    assert OTHER in a.up_together and SMALL in b.up_together, (a.up_together, b.up_together)
    # ... and each recorded the other beside it (measurement.exclusive: false)
    assert small["exclusive"] is False and other["exclusive"] is False
    assert any(f"n{OTHER}/c1/r1" in name for name in small["overlapping_cells"]), small["overlapping_cells"]
    assert any(f"n{SMALL}/c1/r1" in name for name in other["overlapping_cells"]), other["overlapping_cells"]
    # ... on different CPUs, ports, scratch directories, logs
    assert not set(small["cpus_allowed"]) & set(other["cpus_allowed"])
    # (in-driver clusters: both local-cluster[1,1,1024]; their ports are below)
    assert a.master_url == b.master_url == "local-cluster[1,1,1024]", (a.master_url, b.master_url)
    assert not {port for _, port in a.listen.values()} & {port for _, port in b.listen.values()}
    assert a.scratch != b.scratch and a.tags.isdisjoint(b.tags)
    assert a.log != b.log
    # and nothing was written outside the workflow's folders (e.g. BigDL's bigdl.log, pid files)
    assert sorted(p.name for p in study.workdir.iterdir()) == [
        ".snakemake", "cpu-locks", "resources", "results", "scratch", "test-config.yaml"]


def test_web_uis_and_every_port_of_a_cell_are_on_loopback(retried):
    """Every socket a cell listens on (master, worker and their web UIs, driver, block managers,
    Python workers) is bound to 127.0.0.1; the driver's web UI is off."""
    _, cells = retried
    for run in cells.values():
        addresses = {address for address, _ in run.listen.values()}
        assert addresses <= {"0100007F", "0000000000000000FFFF00000100007F"}, addresses  # 127.0.0.1
        # master + its web UI, worker + its web UI (in the driver JVM), driver RPC, two block
        # managers at least
        assert len(run.listen) >= 6, run.listen


# --- 6. SIGKILL to Snakemake mid-study, then the same command ----------------------------------
@pytest.fixture(scope="module")
def killed_study(study, retried):
    before = {size: (study.metrics(size).read_bytes(), study.metrics(size).stat().st_mtime_ns)
              for size in (SMALL, OTHER)}
    study.set_config(grid={"sizes": [SMALL, OTHER, BIG]})
    snakemake = subprocess.Popen(study.command(), env=study.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)

    def kill_snakemake(run: CellRun) -> None:
        snakemake.kill()
        run.done.append("SIGKILL snakemake")

    with Watcher(study.workdir, {BIG: (training, kill_snakemake)}) as watcher:
        try:
            first_output, _ = snakemake.communicate(timeout=1200)
        except subprocess.TimeoutExpired:
            snakemake.kill()
            pytest.fail("snakemake never reached the big cell's training")
        run = watcher.cells.get(BIG)
        assert run and run.done == ["SIGKILL snakemake"], f"never killed: {first_output[-3000:]}"
        # the orphaned cell notices and stops itself, with its teardown
        cell = {run.pid: run.seen[run.pid]}
        assert wait_until(lambda: not still_running(cell), 120), "orphaned cell still running"
    run.freeze()
    locks_left = list((study.workdir / ".snakemake" / "locks").glob("*.lock"))
    locked = study.snakemake()  # Snakemake refuses a folder a dead run left locked ...
    refused_made_metrics = study.metrics(BIG).exists()
    unlock = study.snakemake("--unlock")  # ... until --unlock, which its message names
    assert unlock.returncode == 0, output(unlock)[-3000:]
    rerun = study.snakemake()
    return before, run, locks_left, (locked, refused_made_metrics), rerun


def test_orphaned_cell_stops_and_cleans_up(study, killed_study):
    _, run, _, _, _ = killed_study
    assert re.search(r"FAILED: the process that started this cell \(pid \d+, e\.g\. Snakemake\) is gone",
                     run.log_text())
    assert_nothing_left(run)


def test_unlock_then_the_same_command_after_sigkill_finishes_the_study_keeping_completed_cells(
        study, killed_study):
    before, run, locks_left, (locked, refused_made_metrics), rerun = killed_study
    assert locks_left, "SIGKILL left no Snakemake locks: the locked folder was not exercised"
    assert locked.returncode != 0 and "--unlock" in output(locked), output(locked)[-3000:]
    assert not refused_made_metrics  # the refused run ran nothing
    assert rerun.returncode == 0, output(rerun)[-4000:]
    for size, (data, mtime) in before.items():
        assert study.metrics(size).read_bytes() == data and study.metrics(size).stat().st_mtime_ns == mtime
    big = json.loads(study.metrics(BIG).read_text())
    assert big["size"] == BIG
    tables = study.workdir / "results" / "tables" / DATASET
    assert len((tables / "cells.csv").read_text().strip().splitlines()) == 1 + 3
    assert (study.workdir / "results" / "figures" / DATASET / "speedup.png").exists()


# --- 7. later runs never rewrite a completed cell unless asked ---------------------------------
def snapshot(study: Study) -> dict[int, tuple[bytes, int]]:
    return {size: (study.metrics(size).read_bytes(), study.metrics(size).stat().st_mtime_ns)
            for size in (SMALL, OTHER, BIG)}


def jobs_of(proc: subprocess.CompletedProcess, rule: str) -> list[str]:
    return re.findall(rf"rule {rule}:.*?output: (\S+)", output(proc), flags=re.S)


def test_changed_settings_do_not_rerun_completed_cells(study, killed_study):
    before = snapshot(study)
    study.set_config(training={"learning_rate": 0.002}, partition={"files": 3})
    proc = study.snakemake()
    assert proc.returncode == 0, output(proc)[-4000:]
    assert jobs_of(proc, "train_cell") == [] and "Nothing to be done" in output(proc)
    assert snapshot(study) == before


def test_a_grown_grid_runs_only_the_new_cells_on_data_made_again(study, killed_study):
    """The new cell needs data: the subsets are made again with the changed partition settings
    (their params changed: the profile's rerun-triggers); the completed cells still do not run."""
    study.set_config(grid={"sizes": [SMALL, OTHER, BIG, NEW]})
    try:
        proc = study.snakemake("-n")
    finally:
        study.set_config(grid={"sizes": [SMALL, OTHER, BIG]})
    assert proc.returncode == 0, output(proc)[-3000:]
    assert jobs_of(proc, "train_cell") == [f"results/cells/{DATASET}/bigdl/strong/n{NEW}/c1/r1/metrics.json"]
    assert sorted(jobs_of(proc, "partition_subset")) == sorted(
        f"resources/{DATASET}/subsets/n{size}" for size in (SMALL, OTHER, BIG, NEW))


def test_a_completed_cell_reruns_when_asked(study, killed_study):
    target = str(study.metrics(SMALL).relative_to(study.workdir))
    proc = study.snakemake("-n", "--forcerun", target)
    jobs = re.findall(r"rule train_cell:.*?output: (\S+)", output(proc), flags=re.S)
    assert proc.returncode == 0 and jobs == [target], output(proc)[-3000:]


# --- Slurm: two cells as two jobs on the one test node -----------------------------------------
def slurm_or_skip() -> None:
    require = os.environ.get("DLSCALE_REQUIRE_SLURM") == "1"
    reason = None
    if shutil.which("sinfo") is None:
        reason = "no Slurm client (sinfo) on PATH: run tests/slurm/slurm-up.sh"
    else:
        try:
            res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
            if res.returncode != 0 or not res.stdout.strip():
                reason = "no Slurm controller answers (run tests/slurm/slurm-up.sh): " + res.stderr.strip()
        except subprocess.TimeoutExpired:
            reason = "sinfo timed out: no Slurm controller answers"
    if reason:
        if require:
            pytest.fail(reason + " (DLSCALE_REQUIRE_SLURM=1)", pytrace=False)
        pytest.skip(reason)


@pytest.mark.slurm
def test_two_slurm_jobs_on_one_node_both_succeed(study, retried, tmp_path):
    slurm_or_skip()
    env = {**study.env, "PYTHONPATH": str(REPO / "src")}
    env.pop("DLSCALE_SCRATCH")  # node-local default (/tmp), as on a real node
    jobs = []
    for rep in (1, 2):
        out = tmp_path / f"r{rep}" / "metrics.json"
        cell = [str(TRAINER_PYTHON), "-m", "dlscale.cell", "--dataset", DATASET, "--size", str(SMALL),
                "--cores", "1", "--repetition", str(rep),
                "--train-dir", str(study.workdir / f"resources/{DATASET}/subsets/n{SMALL}"),
                "--test-dir", str(study.workdir / f"resources/{DATASET}/test"), "--out", str(out),
                "--executor-memory", "1g", "--driver-memory", "1g", "--worker-memory", "1g"]
        command = ["sbatch", "--parsable", "--wait", "--cpus-per-task=1", "--mem=6000", "--time=20",
                   "-o", str(tmp_path / f"r{rep}.log"), "--wrap", "exec " + " ".join(cell)]
        jobs.append((subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True), out, tmp_path / f"r{rep}.log"))
    results = []
    with LogOverlap({rep: log for rep, (_, _, log) in enumerate(jobs, start=1)}) as overlap:
        for proc, out, log in jobs:
            stdout, stderr = proc.communicate(timeout=1500)
            text = log.read_text(errors="replace") if log.exists() else ""
            assert proc.returncode == 0, f"sbatch job failed ({proc.returncode}): {stderr}\n{text[-3000:]}"
            results.append((json.loads(out.read_text()), text))
    (first, log1), (second, log2) = results
    assert first["slurm_job_id"] and second["slurm_job_id"] and first["slurm_job_id"] != second["slurm_job_id"]
    assert frozenset({1, 2}) in overlap.together, "the two jobs' clusters were never up at once (node busy?)"
    # in-driver clusters (the default): the master URL is the same, nothing else of theirs
    urls = [re.search(r"in the driver JVM \((local-cluster\S+)\)", text).group(1) for text in (log1, log2)]
    scratches = [re.search(r"scratch (\S+)", text).group(1) for text in (log1, log2)]
    assert urls == ["local-cluster[1,1,1024]"] * 2 and scratches[0] != scratches[1]
    assert not any(os.path.exists(path) for path in scratches)
