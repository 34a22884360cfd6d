"""One node's Spark processes without Spark: they die with the cell, bind to a reachable
address, and only the daemons' environment carries the cluster's secret."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dlscale_testing import TRAINER_PYTHON

from dlscale import spark_node
from dlscale.cluster import StandaloneCluster
from dlscale.spark_node import SECRET_VAR, ClusterError, SparkInstall, daemon_env, node_address, show_log_tails

SRC = str(Path(spark_node.__file__).resolve().parents[1])
INSTALL = SparkInstall(spark_home="/spark", java_home="/java", python="/env/bin/python", bigdl_jars=["a.jar", "b.jar"])
DAEMON_ONLY = ("SPARK_WORKER_DIR", "SPARK_MASTER_OPTS", "SPARK_WORKER_OPTS", "SPARK_DAEMON_MEMORY",
               "SPARK_DAEMON_JAVA_OPTS")


def test_daemons_die_with_a_sigkilled_cell():
    """What the cell starts with preexec_fn=die_with_parent gets SIGTERM when the cell is SIGKILLed."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import subprocess, sys, time
            from dlscale.spark_node import die_with_parent
            child = subprocess.Popen(["sleep", "300"], start_new_session=True, preexec_fn=die_with_parent)
            print(child.pid, flush=True)
            time.sleep(300)
        """)],
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert Path(f"/proc/{child}").exists()
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline and _running(child):
            time.sleep(0.1)
        assert not _running(child), "the child outlived its SIGKILLed parent"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("name,problem", [("localhost", "resolves to 127.0.0.1"),
                                          ("no-such-node.invalid", "cannot resolve")])
def test_a_node_name_the_other_nodes_cannot_reach_is_refused(name, problem):
    with pytest.raises(ClusterError) as error:
        node_address(name)
    assert problem in str(error.value) and "Fix:" in str(error.value)


def test_only_the_daemons_get_the_secret_and_their_options(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_VAR, "inherited")  # as a remote node's worker has it: never the driver's
    cluster = StandaloneCluster(INSTALL, str(tmp_path), cores_per_worker=2, tag="t1", secret="s3cret")
    daemons, driver = cluster.daemon_env(), cluster.driver_env()
    assert daemons[SECRET_VAR] == "s3cret" and SECRET_VAR not in driver
    assert all(key in daemons for key in DAEMON_ONLY) and not any(key in driver for key in DAEMON_ONLY)
    assert driver["PYSPARK_DRIVER_PYTHON"] == "/env/bin/python" and "PYSPARK_DRIVER_PYTHON" not in daemons
    shared = {key: value for key, value in daemons.items() if key not in DAEMON_ONLY + (SECRET_VAR,)}
    assert shared == {key: value for key, value in driver.items() if key != "PYSPARK_DRIVER_PYTHON"}
    assert driver[spark_node.CLUSTER_TAG_VAR] == "t1" and driver["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert driver["SPARK_CONF_DIR"] == str(tmp_path / "conf")


def test_a_remote_node_binds_its_daemons_to_its_own_address(tmp_path):
    env = daemon_env(INSTALL, str(tmp_path), "198.18.0.2", "t1@node2", "s3cret")
    assert env["SPARK_LOCAL_IP"] == "198.18.0.2" and env[spark_node.CLUSTER_TAG_VAR] == "t1@node2"


def test_log_tails_name_the_file_and_the_remote_node(tmp_path, capsys):
    executor = tmp_path / "work" / "app-1" / "0"
    executor.mkdir(parents=True)
    (executor / "stderr").write_text("".join("line %d\n" % i for i in range(50)))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "master.log").write_text("master up\n")
    show_log_tails(str(tmp_path), "node2", lines=3)
    err = capsys.readouterr().err
    assert "----- last 1 lines of logs/master.log on node2 -----\nmaster up\n" in err
    assert "----- last 3 lines of work/app-1/0/stderr on node2 -----\nline 47\nline 48\nline 49\n" in err
    show_log_tails(str(tmp_path), lines=1)
    assert "----- last 1 lines of logs/master.log -----\n" in capsys.readouterr().err


def test_log_tails_keep_a_python_traceback_that_long_java_stack_traces_follow(tmp_path, capsys):
    executor = tmp_path / "work" / "app-1" / "0"
    executor.mkdir(parents=True)
    frames = ["\tat org.apache.spark.Frame%d(Frame.scala:%d)\n" % (i, i) for i in range(25)]
    log = (["INFO starting\n", "Traceback (most recent call last):\n", '  File "pyspark/worker.py"\n',
            "ValueError: mmap length is greater than file size\n"] + frames + ["INFO driver commanded a shutdown\n"]
           + frames[:2] + ["ERROR RECEI"])  # a short run is kept whole; the daemon was killed mid-line
    (executor / "stdout").write_text("".join(log))
    show_log_tails(str(tmp_path), lines=11)
    err = capsys.readouterr().err
    assert err == ("----- last 11 lines of work/app-1/0/stdout -----\n" + "".join(log[1:4] + frames[:3])
                   + "\t... 22 more Java frame(s) elided by dlscale\n" + log[29] + "".join(frames[:2]) + "ERROR RECEI\n")
    # positive control: without the elision, the traceback is outside the tail
    assert "worker.py" not in "".join(log[-11:])


def test_a_master_that_does_not_answer_has_no_workers():
    assert StandaloneCluster.alive_workers(None) == 0
    assert StandaloneCluster.alive_workers({"workers": [{"state": "ALIVE"}, {"state": "DEAD"}]}) == 1


def test_private_files_hold_both_log_configurations_and_bigdls_writes_no_file(tmp_path):
    """Spark's log4j 1 file and the log4j 2 file that BIGDL_JVM_OPTS names, in the conf folder
    (on the driver's and executors' class path); the latter has a console appender only, where
    BigDL's own log4j2-test.xml also appends to a file in /tmp."""
    spark_node.write_private_files(str(tmp_path))
    conf = tmp_path / "conf"
    assert sorted(p.name for p in conf.iterdir()) == sorted(["log4j.properties", spark_node.BIGDL_LOG4J2_NAME])
    assert "-Dlog4j.configurationFile=%s " % spark_node.BIGDL_LOG4J2_NAME in spark_node.BIGDL_JVM_OPTS
    props = dict(line.split(" = ", 1) for line in (conf / spark_node.BIGDL_LOG4J2_NAME).read_text().splitlines())
    appenders = {key.split(".")[1] for key in props if key.startswith("appender.")}
    assert appenders == {"console"} and props["appender.console.type"] == "Console"
    assert props["rootLogger.appenderRef.console.ref"] == "console"
    assert oct((conf).stat().st_mode & 0o777) == "0o700"


def test_kill_tagged_stops_the_tagged_processes_only():
    """What cluster.stop reports as "leftover process(es)": this user's processes whose
    environment carries the cluster's tag; an untagged one (the control) is left alone."""
    tag = "unit-%d" % os.getpid()
    tagged = subprocess.Popen(["sleep", "60"], env=dict(os.environ, **{spark_node.CLUSTER_TAG_VAR: tag}))
    other = subprocess.Popen(["sleep", "60"], env=dict(os.environ, **{spark_node.CLUSTER_TAG_VAR: tag + "-other"}))
    try:
        assert spark_node.tagged_pids(tag) == [tagged.pid]
        assert spark_node.kill_tagged(tag, grace_s=5) == [tagged.pid]
        assert tagged.wait(timeout=5) == -signal.SIGTERM
        assert other.poll() is None and spark_node.tagged_pids(tag) == []
    finally:
        for proc in (tagged, other):
            proc.kill()
            proc.wait()


def test_discover_finds_spark_java_and_bigdls_jars_of_the_trainer_environment_only():
    found = SparkInstall.discover(str(TRAINER_PYTHON))
    assert os.access(os.path.join(found.spark_home, "bin", "spark-class"), os.X_OK)
    assert os.access(os.path.join(found.java_home, "bin", "java"), os.X_OK)
    assert [os.path.basename(jar).split("-")[0] for jar in found.bigdl_jars] == ["all", "bigdl"]
    assert all(os.path.isfile(jar) for jar in found.bigdl_jars)
    with pytest.raises(ClusterError) as error:  # the driver environment has no pyspark
        SparkInstall.discover(sys.executable)
    assert "not a usable trainer environment" in str(error.value) and "make envs" in str(error.value)
