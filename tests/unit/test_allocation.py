"""Which nodes a cell spans, read from its Slurm allocation (real `scontrol show hostnames`)."""

from __future__ import annotations

import shutil
import socket

import pytest

from dlscale.allocation import allocation_nodes
from dlscale.cell_process import CellError

THIS = socket.gethostname().split(".")[0]


@pytest.fixture(autouse=True)
def slurm_job(monkeypatch, tmp_path):
    """A two-node allocation with this host first, as Slurm's batch step sees it, with a Slurm
    config of its own: `scontrol show hostnames` needs one to run at all, and a batch step always
    has its cluster's (no test cluster need be up, nor /etc/slurm/slurm.conf linked to one). Its
    controller is a port bound here but not listening, so that a question to it (``scontrol show
    job``) is refused at once, whichever test cluster runs."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_JOB_NODELIST", f"{THIS},other-node")
    with socket.socket() as no_controller:
        no_controller.bind(("127.0.0.1", 0))
        conf = tmp_path / "slurm.conf"
        conf.write_text("ClusterName=dlscale-unit\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=%d\n"
                        "MessageTimeout=1\n" % no_controller.getsockname()[1])
        monkeypatch.setenv("SLURM_CONF", str(conf))
        yield


@pytest.fixture(autouse=True)
def needs_scontrol():
    if shutil.which("scontrol") is None:
        pytest.fail("scontrol not on PATH: `make test` installs Slurm (tests/slurm/slurm-up.sh)")


def test_a_cell_that_fits_one_node_stays_on_this_node():
    assert allocation_nodes(2, 2) == []
    assert allocation_nodes(4, None) == []  # no cores_per_node: one machine


def test_outside_slurm_a_big_cell_runs_on_this_machine(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID")
    assert allocation_nodes(4, 2) == []


def test_a_cell_spanning_nodes_gets_this_node_first():
    assert allocation_nodes(2, 1) == [THIS, "other-node"]


def test_only_the_nodes_the_cell_needs(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "3")
    monkeypatch.setenv("SLURM_JOB_NODELIST", f"n-a,{THIS},n-b")
    assert allocation_nodes(4, 2) == [THIS, "n-a"]


def test_fewer_nodes_than_needed_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", THIS)
    with pytest.raises(CellError) as error:
        allocation_nodes(4, 2)
    message = str(error.value)
    assert "needs 2 nodes" in message and "has 1" in message and "Fix: submit it with --nodes=2" in message


@pytest.mark.parametrize("nodelist", ["other-node[1-", "", "elsewhere,other-node"])
def test_a_node_list_that_cannot_be_read_is_one_clear_error(monkeypatch, nodelist):
    monkeypatch.setenv("SLURM_JOB_NODELIST", nodelist)
    with pytest.raises(CellError) as error:
        allocation_nodes(2, 1)
    assert "node list of Slurm job 77" in str(error.value) and "Fix:" in str(error.value)


def test_without_the_node_list_in_its_environment_the_cell_asks_the_controller(monkeypatch):
    # The jobstep plugin strips SLURM_JOB_NODELIST/NUM_NODES; a controller that cannot answer for
    # the job (here: refused, slurm_job's) gives the clear error (a real job's list is read from a
    # real controller in tests/slurm/test_multinode_cells.py).
    monkeypatch.delenv("SLURM_JOB_NODELIST")
    monkeypatch.delenv("SLURM_JOB_NUM_NODES")
    monkeypatch.setenv("SLURM_JOB_ID", "999999999")
    with pytest.raises(CellError) as error:
        allocation_nodes(2, 1)
    assert "scontrol show job 999999999" in str(error.value) and "Fix:" in str(error.value)
