"""Can every cell still to run start beside this head job? Run by ``slurm/head.sbatch`` before
it starts ``snakemake --profile slurm``.

The head job holds its CPU (``--cpus-per-task=1``) for the whole study. On a small cluster the
node it runs on may then be the only one with enough CPUs for the largest cell: e.g. a node of
4 CPUs, the head holding 1, a cell asking for 4. Slurm accepts such a job (the node has 4
CPUs) and keeps it pending (Reason ``Resources``) for as long as the head runs, which is for
ever, since the head waits for the cell. This module finds that case before any job is
submitted and exits with an error that names the cells, the nodes and the fixes.

What it counts: the CPUs each node of the cells' partition has (``CPUTot``, capped by the
partition's ``MaxCPUsPerNode``), minus the CPUs this head job holds on its own node; a cell that
asks for whole nodes (``measurement.exclusive``, the default: ``sbatch --exclusive``) cannot use
the head's node at all. Other jobs' CPUs are not counted (they end); nodes that are down, drained
or failed are left out and named. Memory is not checked. The cells are those of the configuration (defaults, then
``--configfile`` files, then ``--config``, as Snakemake merges them) whose ``metrics.json`` does
not exist yet in the working directory (``-d``); the partition is the ``slurm_partition`` of
``--default-resources``, else the profile's, else the cluster's default partition.

``python -m dlscale.slurm_check [snakemake arguments]``: exit 0 (one line saying what fits, or
why nothing was checked), 2 with the error. ``DLSCALE_SKIP_SLURM_CHECK=1`` skips the check.
Parsing is pure (unit-tested on captured ``scontrol -o show node/partition`` text).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

PROFILE = Path("slurm") / "config.yaml"  # `--profile slurm`, from the submit directory (the repository)
UNAVAILABLE = ("DOWN", "DRAIN", "FAIL", "FUTURE", "NOT_RESPONDING", "INVAL", "MAINT", "REBOOT")
EXIT_DOES_NOT_FIT = 2


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int  # CPUTot
    state: str  # e.g. IDLE, MIXED, IDLE+DRAIN, DOWN*
    partitions: Tuple[str, ...]

    @property
    def available(self) -> bool:
        if "*" in self.state:  # not responding
            return False
        words = re.split(r"[+~#$@%!^]", self.state.upper())
        return not any(word.startswith(bad) for word in words for bad in UNAVAILABLE if word)


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    max_cpus_per_node: Optional[int]  # None: UNLIMITED
    state: str = "UP"


@dataclass(frozen=True)
class Shape:
    """What a cell asks Slurm for: ``nodes`` nodes with ``cpus_per_node`` CPUs each."""

    nodes: int
    cpus_per_node: int
    exclusive: bool = False  # whole nodes (measurement.exclusive: sbatch --exclusive)


@dataclass
class Cell:
    backend: str
    scaling: str
    size: int
    cores: int
    rep: int
    shape: Shape = field(default=None)  # type: ignore[assignment]

    @property
    def label(self) -> str:
        return f"{self.backend} {self.scaling} n{self.size} c{self.cores} r{self.rep}"


# --- parsing -------------------------------------------------------------------------------------
def _field(line: str, key: str) -> Optional[str]:
    m = re.search(r"(?:^|\s)%s=(\S*)" % re.escape(key), line)
    return m.group(1) if m else None


def parse_nodes(text: str) -> List[Node]:
    """``scontrol -o show node`` (one line per node) -> nodes."""
    nodes = []
    for line in text.splitlines():
        name = _field(line, "NodeName")
        if not name:
            continue
        cpus = _field(line, "CPUTot") or _field(line, "CPUs") or "0"
        partitions = tuple(p for p in (_field(line, "Partitions") or "").split(",") if p)
        nodes.append(Node(name, int(cpus), _field(line, "State") or "UNKNOWN", partitions))
    return nodes


def parse_partitions(text: str) -> List[Partition]:
    """``scontrol -o show partition`` (one line per partition) -> partitions."""
    partitions = []
    for line in text.splitlines():
        name = _field(line, "PartitionName")
        if not name:
            continue
        limit = _field(line, "MaxCPUsPerNode") or "UNLIMITED"
        partitions.append(Partition(name, (_field(line, "Default") or "NO").upper() == "YES",
                                    int(limit) if limit.isdigit() else None, _field(line, "State") or "UP"))
    return partitions


def _values(argv: Sequence[str], i: int) -> Tuple[List[str], int]:
    """The values after option argv[i] (up to the next option), and the index after them."""
    values = []
    j = i + 1
    while j < len(argv) and not argv[j].startswith("-"):
        values.append(argv[j])
        j += 1
    return values, j


@dataclass
class Args:
    directory: str = "."
    snakefile: str = "Snakefile"
    configfiles: List[str] = field(default_factory=list)
    config: List[str] = field(default_factory=list)
    default_resources: Optional[List[str]] = None  # None: not given (the profile's apply)


def parse_snakemake_args(argv: Sequence[str]) -> Args:
    """The few Snakemake options that decide which cells run, where and with what."""
    args = Args()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in ("-d", "--directory", "-s", "--snakefile"):
            value, i = (inline, i + 1) if eq else ((argv[i + 1] if i + 1 < len(argv) else ""), i + 2)
            if name in ("-d", "--directory"):
                args.directory = value or "."
            else:
                args.snakefile = value or "Snakefile"
            continue
        if name in ("--configfile", "--configfiles", "--config", "-C", "--default-resources", "--default-res"):
            values, nxt = ([inline], i + 1) if eq else _values(argv, i)
            if name in ("--configfile", "--configfiles"):
                args.configfiles += values
            elif name in ("--config", "-C"):
                args.config += values
            else:
                args.default_resources = (args.default_resources or []) + values
            i = nxt
            continue
        i += 1
    return args


def _scalar(text: str):
    """A --config value as Snakemake reads it (int, float, bool, else YAML, else the string)."""
    import yaml

    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def merge(base: dict, new: dict) -> dict:
    """Snakemake's update_config: nested dicts merge, everything else is replaced."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(args: Args, cwd: Path) -> dict:
    """The Snakefile's defaults (config/config.yaml beside it), then each --configfile, then
    --config, merged as Snakemake does."""
    import yaml

    defaults = (cwd / args.snakefile).parent / "config" / "config.yaml"
    config = yaml.safe_load(defaults.read_text()) or {}
    for path in args.configfiles:
        merge(config, yaml.safe_load((cwd / path).read_text()) or {})
    for entry in args.config:
        key, _, value = entry.partition("=")
        merge(config, {key: _scalar(value) if value else None})
    return config


def profile_partition(profile: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load(profile.read_text()) or {}
    except OSError:
        return ""
    return str((data.get("default-resources") or {}).get("slurm_partition") or "")


def cells_partition(args: Args, profile: Path) -> str:
    """The cells' partition ('' = the cluster's default): --default-resources replaces the
    profile's whole default-resources."""
    if args.default_resources is not None:
        for item in args.default_resources:
            key, _, value = item.partition("=")
            if key == "slurm_partition":
                return value.strip("'\"")
        return ""
    return profile_partition(profile)


# --- the cells -----------------------------------------------------------------------------------
def cell_shape(backend: str, cores: int, cores_per_node: int, exclusive: bool = False) -> Shape:
    """As the rules ask (workflow/rules/cells.smk, sized by dlscale.resources): a BigDL cell of
    more cores than a node has spans ceil(cores / cores_per_node) nodes; a PyTorch cell stays on
    one node; with measurement.exclusive every cell asks for whole nodes (sbatch --exclusive)."""
    from dlscale.resources import cpus_per_node, nodes_needed

    nodes = 1 if backend == "torch" else nodes_needed(cores, cores_per_node)
    return Shape(nodes, cpus_per_node(cores, cores_per_node), exclusive)


def missing_cells(config: dict, workdir: Path) -> List[Cell]:
    """The grid's cells whose metrics.json does not exist yet (only those will be submitted)."""
    from dlscale import paths

    grid = config["grid"]
    dataset = config["dataset"]["name"]
    cores_per_node = int((config.get("slurm") or {}).get("cores_per_node") or 1)
    exclusive = bool((config.get("measurement") or {}).get("exclusive", True))
    cells = []
    for backend in config.get("backends") or ["bigdl"]:
        for scaling in config.get("scaling_modes") or ["strong"]:
            for size in grid["sizes"]:
                for cores in grid["cores"]:
                    for rep in range(1, int(grid.get("repetitions", 1)) + 1):
                        metrics = workdir / paths.metrics_file(dataset, backend, scaling, int(size), int(cores), rep)
                        if not metrics.exists():
                            cells.append(Cell(backend, scaling, int(size), int(cores), rep,
                                              cell_shape(backend, int(cores), cores_per_node, exclusive)))
    return cells


# --- the check -----------------------------------------------------------------------------------
@dataclass
class Head:
    job: str
    node: str
    cpus: int


def capacity(node: Node, partition: Partition, head: Optional[Head], exclusive: bool = False) -> int:
    """CPUs a cell can get on ``node`` for as long as the head job runs: none on the head's
    node for a cell that wants whole nodes."""
    cpus = node.cpus if partition.max_cpus_per_node is None else min(node.cpus, partition.max_cpus_per_node)
    if head and node.name == head.node:
        cpus = 0 if exclusive else cpus - head.cpus
    return max(0, cpus)


def fits(shape: Shape, nodes: Iterable[Node], partition: Partition, head: Optional[Head]) -> bool:
    usable = [n for n in nodes if capacity(n, partition, head, shape.exclusive) >= shape.cpus_per_node]
    return len(usable) >= shape.nodes


def check(cells: List[Cell], nodes: List[Node], partition: Partition, head: Optional[Head]) -> Optional[str]:
    """None when every cell can start at some point; else the error message (what, where, fix)."""
    members = [n for n in nodes if partition.name in n.partitions]
    up = [n for n in members if n.available]
    shapes: Dict[Shape, List[Cell]] = {}
    for cell in cells:
        shapes.setdefault(cell.shape, []).append(cell)
    blocked = {s: c for s, c in shapes.items() if not fits(s, up, partition, head)}
    if not blocked:
        return None

    def node_list(chosen: List[Node]) -> str:
        described = []
        for n in chosen:
            text = f"{n.name} ({n.cpus} CPUs"
            if head and n.name == head.node:
                text += f", {head.cpus} held by this head job {head.job}: {capacity(n, partition, head)} beside it"
            if not n.available:
                text += f", {n.state}"
            described.append(text + ")")
        return ", ".join(described) or "none"

    lines = []
    shared_would_fit = False  # an exclusive cell that would fit if cells shared nodes
    for shape, stuck in sorted(blocked.items(), key=lambda item: (-item[0].nodes, -item[0].cpus_per_node)):
        cores = sorted({c.cores for c in stuck})
        what = (f"{len(stuck)} cell(s) of {'/'.join(f'c{c}' for c in cores)} cores ({stuck[0].label}"
                f"{', ...' if len(stuck) > 1 else ''}) ask for {shape.nodes} "
                + (f"whole node(s) (measurement.exclusive: sbatch --exclusive) of at least {shape.cpus_per_node} CPUs"
                   if shape.exclusive else f"node(s) x {shape.cpus_per_node} CPUs"))
        without_head = fits(shape, up, partition, None)
        with_down = fits(shape, members, partition, head)
        if without_head and head:
            held = (f"this head job holds {head.cpus} CPU(s) of {head.node} for the whole study, so "
                    + ("that node is never whole" if shape.exclusive else "that node never has them free"))
            why = (f"the partition has that, but not beside this head job: {held}; such a job would stay "
                   "pending (Reason: Resources) for as long as the head waits for it, that is for ever")
            shared_would_fit |= shape.exclusive and fits(Shape(shape.nodes, shape.cpus_per_node), up, partition, head)
        elif with_down:
            why = "it fits only on nodes that are down or drained now: it waits until an administrator resumes them"
        else:
            why = "no set of nodes of the partition can give that, with or without the head job"
        lines.append(f"  - {what}: {why}.")
    largest = max((capacity(n, partition, head) for n in up), default=0)
    widest = max(blocked, key=lambda s: (s.nodes * s.cpus_per_node, s.nodes))
    allocation = f"sbatch --cpus-per-task={widest.cpus_per_node}"
    if widest.nodes > 1:
        allocation += f" --nodes={widest.nodes}"
    fixes = []
    if shared_would_fit:
        fixes.append("let cells share nodes (with the head job too): measurement.exclusive: false (each "
                     "metrics.json then records whether its cell ran alone)")
    if any(not s.exclusive for s in blocked):
        fixes.append(f"fewer cores: at most {largest} CPUs per node (grid.cores, or slurm.cores_per_node for "
                     "BigDL cells that span nodes)")
    fixes += [
        f"run every cell inside one allocation instead: {allocation} slurm/allocation.sbatch <same arguments>",
        "run `snakemake --profile slurm <same arguments>` from a login node (no head job holds a CPU)",
        "submit the head to a partition whose nodes are not the cells' (sbatch -p <other> slurm/head.sbatch ...)",
    ]
    return (
        f"dlscale: these cells cannot run from this head job on partition "
        f"{partition.name!r} (nodes: {node_list(members)}):\n" + "\n".join(lines) + "\n"
        "Fix, one of (settings in your --configfile or --config):\n"
        + "".join(f"  - {fix};\n" for fix in fixes)
        + "Nothing was submitted. (DLSCALE_SKIP_SLURM_CHECK=1 skips this check.)"
    )


# --- the command ---------------------------------------------------------------------------------
def scontrol(*args: str) -> str:
    res = subprocess.run(["scontrol", "-o", *args], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"scontrol -o {' '.join(args)} failed: {res.stderr.strip() or res.returncode}")
    return res.stdout


def this_head(env: Dict[str, str]) -> Optional[Head]:
    """This Slurm job, its node and the CPUs it holds there (None outside a job)."""
    job, node = env.get("SLURM_JOB_ID"), env.get("SLURMD_NODENAME")
    if not job or not node:
        return None
    cpus = env.get("SLURM_CPUS_ON_NODE") or env.get("SLURM_CPUS_PER_TASK") or "1"
    return Head(job, node, int(cpus) if cpus.isdigit() else 1)


def main(argv: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ) if env is None else env
    if env.get("DLSCALE_SKIP_SLURM_CHECK") == "1":
        print("dlscale: the check of the cells' size against the cluster is skipped (DLSCALE_SKIP_SLURM_CHECK=1)")
        return 0
    args = parse_snakemake_args(argv)
    cwd = Path.cwd()
    workdir = cwd / args.directory
    try:
        config = load_config(args, cwd)
        cells = missing_cells(config, workdir)
        partitions = parse_partitions(scontrol("show", "partition"))
        nodes = parse_nodes(scontrol("show", "node"))
    except Exception as error:  # the check must never be what stops a study
        print(f"dlscale: warning: could not check the cells' size against the cluster ({error}); "
              "starting the study anyway", file=sys.stderr)
        return 0
    name = cells_partition(args, cwd / PROFILE)
    partition = next((p for p in partitions if (p.name == name if name else p.default)), None)
    if partition is None:
        print(f"dlscale: warning: partition {name or '(default)'} not found by scontrol; not checked", file=sys.stderr)
        return 0
    head = this_head(env)
    if not cells:
        print("dlscale: every cell of the grid has its metrics.json: no cell to check")
        return 0
    error = check(cells, nodes, partition, head)
    if error:
        print(error, file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    biggest = max(cells, key=lambda c: (c.shape.nodes, c.shape.cpus_per_node))
    where = f" beside this head job {head.job} on {head.node}" if head else ""
    print(f"dlscale: the {len(cells)} cell(s) to run fit partition {partition.name!r}{where}; the largest, "
          f"{biggest.label}, asks for {biggest.shape.nodes} node(s) x {biggest.shape.cpus_per_node} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
