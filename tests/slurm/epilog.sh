#!/bin/sh
# Epilog of both test clusters (slurm-up.sh and multinode-up.sh install it as etc/epilog.sh).
# slurmd runs it as root on each node of a job after the job ends. It kills what is left of the
# job: processes whose environment carries this job's SLURM_JOB_ID and SLURM_CLUSTER_NAME.
# Why: the test clusters track processes by parent pid (proctrack/linuxproc; cgroups are not
# guaranteed writable on CI machines), and a process whose parent died first escapes that: seen
# with the Snakemake jobstep process of a scancelled job, which survived as an orphan (it waits
# for its running job on SIGTERM, its shell did not). proctrack/cgroup does this on a real cluster.
[ -n "$SLURM_JOB_ID" ] && [ -n "$SLURM_CLUSTER_NAME" ] || exit 0
# This script carries both variables too: it and its own children are left alone.
for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    [ "$pid" = "$$" ] && continue
    # only this node's processes: on the multi-node test cluster every node shares one pid
    # namespace, and a multi-node job runs this Epilog on all its nodes at once
    [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$(readlink /proc/$$/ns/net)" ] || continue
    case $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) in *epilog*) continue ;; esac
    env=$( { tr '\0' '\n' <"$environ"; } 2>/dev/null) || continue
    case $(printf '%s\n' "$env" | grep -x -e "SLURM_JOB_ID=$SLURM_JOB_ID" -e "SLURM_CLUSTER_NAME=$SLURM_CLUSTER_NAME" |
        wc -l) in
    2) ;;
    *) continue ;;
    esac
    # the PPid of a child of this script is this script
    [ "$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" = "$$" ] && continue
    kill -KILL "$pid" 2>/dev/null
done
exit 0
