#!/usr/bin/env bash
# Create the project's two environments (idempotent; `make` calls this).
#   envs/bootstrap.sh driver    .venv/driver : Python >= 3.11, snakemake + plugins, pandas, ...
#   envs/bootstrap.sh trainer   .venv/trainer: Python 3.9, pyspark 3.1.3, BigDL 2.4.0, Java 11
#   envs/bootstrap.sh torch     .venv/torch  : Python >= 3.11, torch (CPU build), numpy, pyarrow
#   envs/bootstrap.sh trainer-cds   the trainer's class-data sharing archives, if missing or stale
#   envs/bootstrap.sh fashion-mnist   Debian's dataset-fashion-mnist (offline demo data)
# Python interpreters: DRIVER_PYTHON / TRAINER_PYTHON (explicit paths) win; otherwise the
# trainer's Python 3.9 is looked up as python3.9 on PATH (module load, conda activate), then pyenv.
set -euo pipefail
cd "$(dirname "$0")/.."

works() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(0)' >/dev/null 2>&1; }

find_python39() {
  local candidate
  for candidate in "${TRAINER_PYTHON:-}" "$(command -v python3.9 || true)" \
      "$( (pyenv prefix 3.9 2>/dev/null || true) | head -n1)/bin/python3.9"; do
    if works "$candidate" && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))'; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: no Python 3.9 found for the trainer environment. Install one (module load python/3.9," \
       "conda create -n py39 python=3.9, or pyenv install 3.9.18) and rerun with" \
       "TRAINER_PYTHON=/path/to/python3.9 make ..." >&2
  return 1
}

# make_venv NAME PYTHON REQUIREMENTS [extra pip args]: recreate only when the pins changed.
make_venv() {
  local name=$1 python=$2 requirements=$3; shift 3
  local venv=.venv/$name stamp=.venv/$name/.installed
  if [ -f "$stamp" ] && cmp -s "$stamp" "$requirements"; then return 0; fi
  echo ">> creating $venv with $python ($requirements)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -r "$requirements" "$@"
  cp "$requirements" "$stamp"
}

# The JVMs' class-data sharing archives (dlscale.jvm_cds): built by a warm-up cell (about a
# minute) once per trainer environment, again when it changed. Without them cells still run (their
# JVMs start slower, with a warning), so a failed build only warns.
trainer_cds() {
  local python=.venv/trainer/bin/python
  # absolute: the warm-up driver runs in its own scratch folder
  local src="$PWD/src"
  PYTHONPATH="$src" "$python" -m dlscale.jvm_cds --check >/dev/null 2>&1 && return 0
  echo ">> building the trainer JVMs' class-data sharing archives (a warm-up cell)"
  PYTHONPATH="$src" "$python" -m dlscale.jvm_cds ||
    echo "warning: class-data sharing archives not built; cells start their JVMs without them." \
         "Fix: see the error above, then rerun envs/bootstrap.sh trainer-cds" >&2
}

case "${1:-}" in
  driver)
    python=${DRIVER_PYTHON:-python3}
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
      echo "error: the driver needs Python >= 3.11 (snakemake 9); set DRIVER_PYTHON" >&2; exit 1; }
    make_venv driver "$python" envs/driver-requirements.txt -e .
    ;;
  trainer)
    make_venv trainer "$(find_python39)" envs/trainer-requirements.txt
    trainer_cds
    ;;
  trainer-cds)
    trainer_cds
    ;;
  torch)
    # The PyTorch peer (backend: torch). Same interpreter rule as the driver.
    python=${DRIVER_PYTHON:-python3}
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
      echo "error: the torch environment needs Python >= 3.11; set DRIVER_PYTHON" >&2; exit 1; }
    make_venv torch "$python" envs/torch-requirements.txt
    ;;
  fashion-mnist)
    # The offline stand-in for MNIST (same IDX format and shapes); real MNIST needs the network.
    if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
      if [ "$(id -u)" != 0 ]; then
        echo "error: install Debian's dataset-fashion-mnist (as root) or set dataset.dir" >&2; exit 1
      fi
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
    fi
    ;;
  *) echo "usage: $0 driver|trainer|trainer-cds|torch|fashion-mnist" >&2; exit 2 ;;
esac
