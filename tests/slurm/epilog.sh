#!/bin/sh
# Epilog of both test clusters (slurm-up.sh and multinode-up.sh install it as etc/epilog.sh).
# slurmd runs it as root on each node of a job after the job ends. It ends what is left of the
# job on this node: processes whose environment carries this job's SLURM_JOB_ID and
# SLURM_CLUSTER_NAME get GRACE seconds to finish (they already had Slurm's signal: a cell is
# still tearing down), then SIGKILL, as proctrack/cgroup and KillWait would on a real cluster.
# Why: the test clusters track processes by parent pid (proctrack/linuxproc; cgroups are not
# guaranteed writable on CI machines), and a process whose parent died first escapes that: seen
# with the Snakemake jobstep process of a scancelled job, which survived as an orphan (it waits
# for its running job on SIGTERM, its shell did not).
GRACE=30
[ -n "$SLURM_JOB_ID" ] && [ -n "$SLURM_CLUSTER_NAME" ] || exit 0
netns=$(readlink /proc/$$/ns/net)

left() { # the job's processes on this node, but this script and its children
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        [ "$pid" = "$$" ] && continue
        # only this node's processes: on the multi-node test cluster every node shares one pid
        # namespace, and a multi-node job runs this Epilog on all its nodes at once
        [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$netns" ] || continue
        env=$( { tr '\0' '\n' <"$environ"; } 2>/dev/null) || continue
        [ "$(printf '%s\n' "$env" | grep -c -x -e "SLURM_JOB_ID=$SLURM_JOB_ID" \
            -e "SLURM_CLUSTER_NAME=$SLURM_CLUSTER_NAME")" = 2 ] || continue
        case $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) in *epilog*) continue ;; esac
        [ "$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" = "$$" ] && continue
        grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && continue # zombie: already dead
        echo "$pid"
    done
}

# An orphaned Snakemake (the jobstep process above) waits for a step that is over, for ever: once
# only such processes are left, nothing is tearing down, so they get no grace (a node set down
# left one: the grace held its job 30 s). Every pid given: parent PID 1, command `... -m snakemake`.
only_orphaned_snakemake() {
    for pid in "$@"; do
        [ "$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" = 1 ] || return 1
        case $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) in *" -m snakemake "*) ;; *) return 1 ;; esac
    done
}

waited=0
while pids=$(left) && [ -n "$pids" ] && ! only_orphaned_snakemake $pids && [ "$waited" -lt "$GRACE" ]; do
    sleep 1
    waited=$((waited + 1))
done
for pid in $(left); do
    kill -KILL "$pid" 2>/dev/null
done
exit 0
