# dlscale: the two commands of the README, and their set-up.
#   make demo   the study on a small grid with the local executor (Fashion-MNIST, offline)
#   make test   the whole test suite (unit, integration with real BigDL/Spark, real Slurm)
#   make bench  (see README) the benchmark that prints the speed figures
SHELL := /bin/bash
DRIVER := .venv/driver/bin
SNAKEMAKE := $(DRIVER)/snakemake
CORES ?= 2

.PHONY: demo test unit lint envs fashion-mnist bench trainer-cds
.DEFAULT_GOAL := demo

envs: .venv/driver/.installed .venv/trainer/.installed trainer-cds

# The trainer JVMs' class-data sharing archives: a quick check, a warm-up cell only when missing or stale.
trainer-cds: .venv/trainer/.installed
	envs/bootstrap.sh trainer-cds

.venv/driver/.installed: envs/driver-requirements.txt
	envs/bootstrap.sh driver

.venv/trainer/.installed: envs/trainer-requirements.txt
	envs/bootstrap.sh trainer

.venv/torch/.installed: envs/torch-requirements.txt
	envs/bootstrap.sh torch

fashion-mnist:
	envs/bootstrap.sh fashion-mnist

demo: envs fashion-mnist
	$(SNAKEMAKE) --workflow-profile workflow/profiles/default --cores $(CORES) --configfile config/demo.yaml
	$(SNAKEMAKE) --workflow-profile workflow/profiles/default --cores 1 --configfile config/demo.yaml \
		--report results/report.html

lint: envs
	$(SNAKEMAKE) --lint --configfile config/demo.yaml
	$(DRIVER)/snakefmt --check Snakefile workflow/rules

unit: envs
	$(DRIVER)/python -m pytest tests/unit -q

test: envs .venv/torch/.installed fashion-mnist
	tests/slurm/slurm-up.sh
	tests/slurm/multinode-up.sh
	DLSCALE_REQUIRE_SLURM=1 $(DRIVER)/python -m pytest -q -ra --durations=25 tests; status=$$?; \
		tests/slurm/multinode-down.sh; tests/slurm/slurm-down.sh; exit $$status

# The benchmark (README, Performance): a clean grid of cores {1,2} x one size x 3 repetitions,
# BigDL and its PyTorch peer, strong and weak scaling; prints the figures and the targets and
# writes results/bench/. Options: make bench BENCH_ARGS="--size 10000 --reps 1 --backends bigdl"
bench: envs .venv/torch/.installed fashion-mnist
	$(DRIVER)/python -m dlscale.bench $(BENCH_ARGS)
