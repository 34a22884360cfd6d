"""dlscale.slurm_check, the head wrapper's check that every cell can start beside the head job:
parsing of captured `scontrol -o show node/partition` text (from the test clusters), of the
wrapper's Snakemake arguments, and the decision. The check on a real Slurm:
tests/slurm/test_head_wrapper.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dlscale import paths
from dlscale.slurm_check import (Cell, Head, Node, Partition, cell_shape, cells_partition, check, load_config,
                                 missing_cells, parse_nodes, parse_partitions, parse_snakemake_args)

# Captured on the single-node test cluster (tests/slurm/slurm-up.sh) and the two-node one.
VM = ("NodeName=vm Arch=x86_64 CoresPerSocket=4  CPUAlloc=1 CPUEfctv=4 CPUTot=4 CPULoad=4.48 "
      "AvailableFeatures=(null) ActiveFeatures=(null) Gres=(null) NodeAddr=127.0.0.1 NodeHostName=vm "
      "Version=22.05.8 OS=Linux 6.18.44-fc-v595 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=21695 AllocMem=0 "
      "FreeMem=20191 Sockets=1 Boards=1 State=MIXED ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A "
      "MCS_label=N/A Partitions=debug  BootTime=2026-11-27T01:23:24 SlurmdStartTime=2026-11-27T02:03:36 "
      "LastBusyTime=2026-11-27T03:05:54 CfgTRES=cpu=4,mem=21695M,billing=4 AllocTRES=cpu=1 CapWatts=n/a "
      "CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s\n")
TWO_NODES = "".join(
    f"NodeName=dlscale-n{i} Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=1 CPUTot=1 CPULoad=0.10 "
    f"NodeAddr=198.18.0.1{i} NodeHostName=dlscale-n{i} Version=22.05.8 OS=Linux 6.1 #1 SMP  "
    f"RealMemory=10847 AllocMem=0 State={state} ThreadsPerCore=1 Partitions=multi  "
    f"{reason}CfgTRES=cpu=1,mem=10847M,billing=1\n"
    for i, state, reason in [(1, "IDLE", ""), (2, "DOWN", "Reason=dlscale-test [root@2026-11-27T03:10:00] ")]
)
DEBUG = ("PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
         "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
         "MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 "
         "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
         "TotalCPUs=4 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
         "MaxMemPerNode=UNLIMITED TRES=cpu=4,mem=21695M,node=1,billing=4\n")
CAPPED = DEBUG.replace("PartitionName=debug", "PartitionName=small").replace("Default=YES", "Default=NO") \
    .replace("MaxCPUsPerNode=UNLIMITED", "MaxCPUsPerNode=2")


def cells(*cores: int, cores_per_node: int = 32, backend: str = "bigdl", exclusive: bool = False) -> list[Cell]:
    return [Cell(backend, "strong", 256, c, 1, cell_shape(backend, c, cores_per_node, exclusive)) for c in cores]


def test_nodes_and_partitions_are_parsed_from_scontrol_one_liners():
    assert parse_nodes(VM) == [Node("vm", 4, "MIXED", ("debug",))]
    n1, n2 = parse_nodes(TWO_NODES)
    assert (n1.name, n1.cpus, n1.available) == ("dlscale-n1", 1, True)
    assert (n2.name, n2.state, n2.available) == ("dlscale-n2", "DOWN", False)
    assert parse_partitions(DEBUG + CAPPED) == [Partition("debug", True, None, "UP"),
                                                Partition("small", False, 2, "UP")]


@pytest.mark.parametrize("state, available", [
    ("IDLE", True), ("MIXED", True), ("ALLOCATED", True), ("IDLE~", True), ("MIXED+DRAIN", False),
    ("IDLE+DRAIN", False), ("DOWN*", False), ("IDLE*", False), ("DOWN+NOT_RESPONDING", False), ("FUTURE", False),
    ("IDLE+POWERED_DOWN", True),
])
def test_node_availability_follows_its_state(state, available):
    assert Node("n", 4, state, ("p",)).available is available


def test_a_cell_that_needs_every_cpu_of_the_head_s_node_is_refused_naming_the_fix():
    error = check(cells(1, 4), parse_nodes(VM), parse_partitions(DEBUG)[0], Head("123", "vm", 1))
    assert error is not None
    assert "c4" in error and "c1 " not in error  # only the cell that does not fit
    assert "1 node(s) x 4 CPUs" in error
    assert "vm (4 CPUs, 1 held by this head job 123: 3 beside it)" in error
    assert "pending (Reason: Resources)" in error
    assert "at most 3 CPUs per node" in error
    assert "sbatch --cpus-per-task=4 slurm/allocation.sbatch" in error
    assert "from a login node" in error


def test_cells_that_fit_beside_the_head_pass():
    # positive controls: one CPU fewer than the node has; the same cell with the head elsewhere
    assert check(cells(1, 2, 3), parse_nodes(VM), parse_partitions(DEBUG)[0], Head("123", "vm", 1)) is None
    assert check(cells(4), parse_nodes(VM), parse_partitions(DEBUG)[0], Head("123", "login", 1)) is None
    assert check(cells(4), parse_nodes(VM), parse_partitions(DEBUG)[0], None) is None


def test_a_cell_on_whole_nodes_never_starts_on_the_head_s_node():
    # measurement.exclusive (the default): sbatch --exclusive, so even a 1-core cell needs the whole node
    error = check(cells(1, exclusive=True), parse_nodes(VM), parse_partitions(DEBUG)[0], Head("5", "vm", 1))
    assert error is not None
    assert "whole node(s) (measurement.exclusive: sbatch --exclusive)" in error and "never whole" in error
    assert "measurement.exclusive: false" in error
    assert "fewer cores" not in error  # would not help
    # positive controls: the head on another node; cells that share nodes
    assert check(cells(1, exclusive=True), parse_nodes(VM), parse_partitions(DEBUG)[0], Head("5", "login", 1)) is None
    assert check(cells(1, 3), parse_nodes(VM), parse_partitions(DEBUG)[0], Head("5", "vm", 1)) is None
    # two one-CPU nodes, the head on the first: whole-node 1-core cells run on the second
    up = parse_nodes(TWO_NODES.replace("State=DOWN", "State=IDLE"))
    assert check(cells(1, cores_per_node=1, exclusive=True), up, Partition("multi", True, None),
                 Head("5", "dlscale-n1", 1)) is None
    error = check(cells(2, cores_per_node=1, exclusive=True), up, Partition("multi", True, None),
                  Head("5", "dlscale-n1", 1))
    assert error and "2 whole node(s)" in error


def test_a_multinode_cell_counts_nodes_beside_the_head_and_skips_down_nodes():
    partition = Partition("multi", True, None)
    up = parse_nodes(TWO_NODES.replace("State=DOWN", "State=IDLE"))
    two = cells(2, cores_per_node=1)  # spans both one-CPU nodes
    assert two[0].shape.nodes == 2 and two[0].shape.cpus_per_node == 1
    assert check(two, up, partition, None) is None
    error = check(two, up, partition, Head("7", "dlscale-n1", 1))
    assert error and "2 node(s) x 1 CPUs" in error and "sbatch --cpus-per-task=1 --nodes=2" in error
    error = check(two, parse_nodes(TWO_NODES), partition, None)  # n2 is down
    assert error and "down or drained" in error and "dlscale-n2 (1 CPUs, DOWN)" in error


def test_a_cell_larger_than_any_node_and_the_partition_cap_are_reported():
    error = check(cells(8), parse_nodes(VM), parse_partitions(DEBUG)[0], None)
    assert error and "no set of nodes of the partition can give that" in error
    capped = parse_partitions(CAPPED)[0]
    node = [Node("vm", 4, "IDLE", ("small",))]
    assert check(cells(2), node, capped, None) is None
    assert "c3" in (check(cells(3), node, capped, None) or "")


def test_a_torch_cell_stays_on_one_node():
    assert cell_shape("torch", 64, 32).nodes == 1 and cell_shape("torch", 64, 32).cpus_per_node == 32
    assert cell_shape("bigdl", 64, 32).nodes == 2


def test_the_wrapper_arguments_give_workdir_configfiles_config_and_partition():
    args = parse_snakemake_args(["-d", "/w", "--configfile", "a.yaml", "b.yaml", "--config", "grid={cores: [4]}",
                                 "--default-resources", "slurm_partition=gpu", "slurm_account=x", "--jobs", "1"])
    assert args.directory == "/w" and args.configfiles == ["a.yaml", "b.yaml"]
    assert args.config == ["grid={cores: [4]}"]
    assert cells_partition(args, Path("/nonexistent")) == "gpu"
    args = parse_snakemake_args(["--directory=/v", "--configfile=c.yaml", "-n"])
    assert (args.directory, args.configfiles, args.default_resources) == ("/v", ["c.yaml"], None)


def test_the_partition_comes_from_the_profile_unless_default_resources_replace_it(tmp_path):
    profile = tmp_path / "config.yaml"
    profile.write_text(yaml.safe_dump({"default-resources": {"slurm_partition": "batch", "slurm_account": ""}}))
    assert cells_partition(parse_snakemake_args([]), profile) == "batch"
    # --default-resources replaces the profile's whole block: no partition there = the default one
    assert cells_partition(parse_snakemake_args(["--default-resources", "slurm_account=root"]), profile) == ""


def test_config_merges_like_snakemake_and_only_missing_cells_count(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "Snakefile").write_text("")
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump({
        "dataset": {"name": "mnist"}, "grid": {"sizes": [1000], "cores": [1, 32], "repetitions": 1},
        "backends": ["bigdl"], "scaling_modes": ["strong"], "slurm": {"cores_per_node": 32}}))
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"dataset": {"name": "fashion-mnist"},
                                                        "grid": {"sizes": [256]}}))
    args = parse_snakemake_args(["-s", str(tmp_path / "Snakefile"), "--configfile", "mine.yaml",
                                 "--config", "grid={sizes: [256], cores: [1, 4], repetitions: 1}"])
    config = load_config(args, tmp_path)
    assert config["dataset"]["name"] == "fashion-mnist" and config["slurm"]["cores_per_node"] == 32
    assert config["grid"]["cores"] == [1, 4]
    assert all(c.shape.exclusive for c in missing_cells(config, tmp_path))  # measurement.exclusive's default
    shared = load_config(parse_snakemake_args(["-s", str(tmp_path / "Snakefile"), "--configfile", "mine.yaml",
                                               "--config", "measurement={exclusive: false}"]), tmp_path)
    assert not any(c.shape.exclusive for c in missing_cells(shared, tmp_path))
    done = tmp_path / paths.metrics_file("fashion-mnist", "bigdl", "strong", 256, 4, 1)
    assert [c.cores for c in missing_cells(config, tmp_path)] == [1, 4]
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({}))
    assert [c.cores for c in missing_cells(config, tmp_path)] == [1]
