#!/bin/sh
# TaskProlog of the dlscale-multi test cluster. multinode-up.sh installs a copy
# as @MSTATE@/etc/taskprolog.sh (the @VAR@ substituted). slurmstepd runs it as
# the job's user before every task, the batch script included, and adds each
# "export NAME=value" line it prints to that task's environment.
# Like a real site, it gives every task its node's local scratch as
# SLURM_TMPDIR and TMPDIR: here @MSTATE@/nodes/<node>/tmp (made, mode 1777, by
# multinode-up.sh), so that tests can tell one node's scratch from another's.
# TMPDIR too: the Snakemake jobstep plugin removes SLURM_* variables (SLURM_TMPDIR
# with them) from the environment of the rule it runs, so a cell under the
# profile finds its node's scratch through TMPDIR (tempfile.gettempdir()).
node=${SLURMD_NODENAME:-$(hostname)}
dir="@MSTATE@/nodes/$node/tmp"
if [ -d "$dir" ]; then
    echo "export SLURM_TMPDIR=$dir"
    echo "export TMPDIR=$dir"
fi
exit 0
