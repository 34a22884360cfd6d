#!/bin/sh
# Epilog of both test clusters (slurm-up.sh and multinode-up.sh install it as etc/epilog.sh).
# slurmd runs it as root on each node of a job after the job ends. It kills what is left of the
# job: processes whose environment carries this job's SLURM_JOB_ID and SLURM_CLUSTER_NAME.
# Why: the test clusters track processes by parent pid (proctrack/linuxproc; cgroups are not
# guaranteed writable on CI machines), and a process whose parent died first escapes that: seen
# with the Snakemake jobstep process of a scancelled job, which survived as an orphan (it waits
# for its running job on SIGTERM, its shell did not). proctrack/cgroup does this on a real cluster.
[ -n "$SLURM_JOB_ID" ] && [ -n "$SLURM_CLUSTER_NAME" ] || exit 0
for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    tr '\0' '\n' <"$environ" 2>/dev/null | grep -qx "SLURM_JOB_ID=$SLURM_JOB_ID" || continue
    tr '\0' '\n' <"$environ" 2>/dev/null | grep -qx "SLURM_CLUSTER_NAME=$SLURM_CLUSTER_NAME" || continue
    kill -KILL "$pid" 2>/dev/null
done
exit 0
