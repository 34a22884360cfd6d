"""Where the CPU time of one BigDL cell goes: run one cell by itself and sample, every 0.1 s,
the CPU time (user + system, /proc/<pid>/stat) of every process it starts, by kind of process.

    .venv/trainer/bin/python tests/perf/cell_cpu.py [--size 1000] [--cores 1] [--src DIR]

Needs the trainer environment and the prepared subsets under resources/<dataset>/ (the demo or
`make bench` makes them). ``--src`` runs another checkout's dlscale (a before/after comparison:
``git worktree add /tmp/old <commit>``, then ``--src /tmp/old/src``). Prints each kind's CPU
seconds (master, worker, spark-submit's launcher, the driver JVM, the trainer's Python, the
executor JVM, the executor's Python workers, the cell itself) and the cell's phases from its
metrics.json; ``--idle`` adds the half-seconds in which the cell left its CPUs idle, by phase,
``--phases`` each kind's CPU seconds in each phase, ``--threads`` the JVMs' CPU by thread (JIT
compiler, GC, the VM thread, the application's own threads: digits in thread names folded, "C1
CompilerThre" is HotSpot's 15-character name). README "What was tuned" quotes one run. Not a
test: speed is measured here and in `make bench`, never asserted. A process that lives less
than 0.1 s may be missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[2]
TICKS = os.sysconf("SC_CLK_TCK")
# (a marker in the command line, the kind of process), the first match wins
KINDS = [
    ("deploy.master.Master", "master"),
    ("deploy.worker.Worker", "worker"),
    ("CoarseGrainedExecutorBackend", "executor JVM"),
    ("launcher.Main", "launcher JVM"),
    ("SparkSubmit", "driver JVM"),
    ("pyspark.daemon", "executor Python"),
    ("pyspark/daemon", "executor Python"),
    ("trainer.py", "trainer Python"),
    ("dlscale.cell", "cell"),
]


def kind_of(command: str) -> str:
    return next((kind for marker, kind in KINDS if marker in command), "other")


def descendants(root: int) -> List[int]:
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(stat: str) -> float:
    """User + system CPU seconds from the text of a process's or thread's /proc ... /stat."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_times(pid: int) -> Dict[str, tuple]:
    """tid -> (thread name with digits folded, "GC Thread#0" -> "GC Thread#N"; CPU seconds so far)
    of each live thread of ``pid``."""
    times: Dict[str, tuple] = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return times
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as handle:
                text = handle.read()
        except OSError:
            continue
        name = re.sub(r"\d+", "N", text[text.index("(") + 1:text.rindex(")")])
        times[tid] = (name, cpu_seconds(text))
    return times


def phase_ends(timings: Dict[str, float]) -> List[tuple]:
    """(end, phase) of each phase, laid end to end from the cell's start in dlscale.phases order."""
    sys.path.insert(0, str(REPO / "src"))
    from dlscale.phases import PHASES

    ends, clock = [], 0.0
    for phase in PHASES:
        clock += timings.get(phase, 0.0)
        ends.append((clock, phase))
    return ends


def print_phases(by_kind_timeline: List[tuple], timings: Dict[str, float], kinds: List[str]) -> None:
    """The CPU seconds of each kind of process in each phase (sampled every 0.1 s: a phase's
    share is what its kinds used between the samples nearest its start and end)."""
    def sampled(moment: float) -> Dict[str, float]:
        last: Dict[str, float] = {}
        for when, sums in by_kind_timeline:
            if when > moment:
                break
            last = sums
        return last

    print("\n| phase | wall s | %s |\n|---|---:|%s" % (" | ".join(kinds), "---:|" * len(kinds)))
    start, before = 0.0, {}
    for end, phase in phase_ends(timings):
        now = sampled(end)
        print("| %s | %.2f | %s |" % (phase, end - start,
                                     " | ".join("%.2f" % (now.get(kind, 0.0) - before.get(kind, 0.0)) for kind in kinds)))
        start, before = end, now


def print_idle(timeline: List[tuple], timings: Dict[str, float], cores: int) -> None:
    """The half-seconds in which the cell's processes used under 80 % of its cores, each with the
    phase it fell in (the phases laid end to end from the cell's start, dlscale.phases order)."""
    ends = phase_ends(timings)
    print("\n| from s | to s | CPU used | phase |\n|---:|---:|---:|---|")
    idle = 0.0
    for start in [t / 2 for t in range(int(timeline[-1][0] * 2))]:
        inside = [sample for sample in timeline if start <= sample[0] <= start + 0.5]
        if len(inside) < 2:
            continue
        used = (inside[-1][1] - inside[0][1]) / ((inside[-1][0] - inside[0][0]) * cores)
        if used < 0.8:
            idle += (1 - used) * 0.5
            phase = next((name for end, name in ends if start + 0.25 <= end), "after the phases")
            print("| %.1f | %.1f | %.0f %% | %s |" % (start, start + 0.5, 100 * used, phase))
    print("\nCPU left unused in those half-seconds: %.1f core-seconds" % (idle * cores))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--src", default=str(REPO / "src"), help="the dlscale package's folder to run")
    parser.add_argument("--threads", action="store_true", help="also each JVM's CPU by thread name")
    parser.add_argument("--phases", action="store_true", help="also each kind of process's CPU in each phase")
    parser.add_argument("--idle", action="store_true",
                        help="also the half-seconds in which the cell's processes used under 80 %% of its cores")
    args = parser.parse_args()
    data = REPO / "resources" / args.dataset
    out = Path(tempfile.mkdtemp(prefix="dlscale-cell-cpu-"))
    command = [sys.executable, "-m", "dlscale.cell", "--dataset", args.dataset, "--size", str(args.size),
               "--cores", str(args.cores), "--train-dir", str(data / "subsets" / ("n%d" % args.size)),
               "--test-dir", str(data / "test"), "--out", str(out / "metrics.json")]
    with open(out / "cell.log", "w") as log:
        cell = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=args.src), cwd=REPO)
        cpu: Dict[int, tuple] = {}  # pid -> (kind, CPU seconds so far)
        threads: Dict[int, Dict[str, tuple]] = {}  # pid -> tid -> (name, CPU seconds so far), --threads
        started, started_epoch = time.monotonic(), time.time()
        timeline: List[tuple] = []  # (seconds since the cell's start, CPU seconds of its processes so far)
        by_kind_timeline: List[tuple] = []  # (seconds since the cell's start, kind -> CPU seconds so far), --phases
        while cell.poll() is None:
            for pid in descendants(cell.pid):
                try:
                    with open("/proc/%d/stat" % pid) as handle:
                        stat = handle.read()
                    with open("/proc/%d/cmdline" % pid, "rb") as handle:
                        line = handle.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                kind = cpu[pid][0] if pid in cpu else kind_of(line)
                cpu[pid] = (kind, cpu_seconds(stat))
                if args.threads and ("JVM" in kind or kind in ("master", "worker")):
                    threads.setdefault(pid, {}).update(thread_times(pid))  # keeps threads that ended
            timeline.append((time.monotonic() - started, sum(seconds for _, seconds in cpu.values())))
            if args.phases:
                sums: Dict[str, float] = {}
                for kind, seconds in cpu.values():
                    sums[kind] = sums.get(kind, 0.0) + seconds
                by_kind_timeline.append((timeline[-1][0], sums))
            time.sleep(0.1)
    if cell.returncode != 0:
        print("the cell failed (exit %d); its log: %s" % (cell.returncode, out / "cell.log"), file=sys.stderr)
        return 1
    by_kind: Dict[str, float] = {}
    for kind, seconds in cpu.values():
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds
    timings = json.loads((out / "metrics.json").read_text())["timings_s"]
    print("| process | CPU s |\n|---|---:|")
    for kind, seconds in sorted(by_kind.items(), key=lambda item: -item[1]):
        print("| %s | %.2f |" % (kind, seconds))
    print("| all | %.2f |\n\nwall time (total) %.2f s, train %.2f s, fixed (total - train) %.2f s; log: %s"
          % (sum(by_kind.values()), timings["total"], timings["train"], timings["total"] - timings["train"],
             out / "cell.log"))
    print(json.dumps({phase: round(seconds, 2) for phase, seconds in timings.items()}))
    if args.phases:
        print_phases(by_kind_timeline, timings, sorted(by_kind, key=lambda kind: -by_kind[kind]))
    if args.idle:
        print_idle(timeline, timings, args.cores)
        print("(the cell started at %.3f s on the epoch clock)" % started_epoch)
    if args.threads:
        by_thread: Dict[tuple, float] = {}
        for pid, by_tid in threads.items():
            for name, seconds in by_tid.values():
                by_thread[(cpu[pid][0], name)] = by_thread.get((cpu[pid][0], name), 0.0) + seconds
        print("\n| process | thread | CPU s |\n|---|---|---:|")
        for (kind, name), seconds in sorted(by_thread.items(), key=lambda item: -item[1]):
            if seconds >= 0.05:
                print("| %s | %s | %.2f |" % (kind, name, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
