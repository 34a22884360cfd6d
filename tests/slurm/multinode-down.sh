#!/usr/bin/env bash
# Stop the multi-node cluster that multinode-up.sh started: every node's slurmd
# and whatever still runs in its network namespace, the cluster's slurmctld;
# then remove the namespaces, the veth pairs, the bridge dlsbr0 and the marked
# /etc/hosts lines. The single-node cluster's daemons (munged, slurmdbd,
# mariadbd, its slurmctld/slurmd) are left alone: slurm-down.sh stops those.
# Idempotent: what is already gone is skipped, and it exits 0 either way.
#   --purge   also delete $DLSCALE_MULTI_DIR (default /var/tmp/dlscale-slurm-multi):
#             job ids start at 1 again; the old jobs' records stay in the shared
#             slurmdbd (`sacct -j N` shows the newest job N; slurm-down.sh --purge
#             deletes the database).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
multi_settings
log() { printf '[slurm-multi %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
T0=$(date +%s.%N)

# Nodes: those with a namespace or a pid file, whatever DLSCALE_MULTI_NODES says now.
nodes=$(
    for f in /run/netns/dlscale-n* "$MSTATE"/run/slurmd-dlscale-n*.pid; do
        [[ -e $f ]] || continue
        f=${f##*/}
        f=${f#slurmd-}
        echo "${f%.pid}"
    done | sort -uV
)
# Every job of the cluster is cancelled first: its processes die with the nodes
# anyway, and this way slurmctld's record (and sacct, and a waiting `sbatch
# --wait`) says so at once instead of keeping it running.
export SLURM_CONF=$MCONF
if [[ -f $MCONF ]] && alive "$MSTATE/run/slurmctld.pid" slurmctld; then
    jobs=$(timeout 20 squeue -h -o %i 2>/dev/null | sort -u)
    if [[ -n $jobs ]]; then
        log "cancelling the jobs of $MCLUSTER: $(echo $jobs)"
        timeout 20 scancel $jobs
        no_jobs() { [[ -z $(timeout 10 squeue -h -o %i 2>/dev/null) ]]; }
        wait_for 20 "the cancelled jobs to end" no_jobs
    fi
fi
for node in $nodes; do
    mnode_stop "$node"
done
stop_daemon "$MSTATE/run/slurmctld.pid" slurmctld

for node in $nodes; do
    i=${node#dlscale-n}
    [[ $i =~ ^[0-9]+$ ]] && ip link show "$(mnode_veth "$i")" >/dev/null 2>&1 &&
        ip link del "$(mnode_veth "$i")"
    if [[ -e /run/netns/$node ]]; then
        log "removing network namespace $node"
        ip netns del "$node" || log "could not remove namespace $node"
    fi
done
# veths whose namespace was gone already (removing a namespace here does not
# always take the host end of its veth pair with it).
for veth in $(ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep '^dlsv-n[0-9]*$'); do
    ip link del "$veth" 2>/dev/null || true
done
if ip link show "$MBRIDGE" >/dev/null 2>&1; then
    log "removing bridge $MBRIDGE"
    ip link del "$MBRIDGE" || log "could not remove bridge $MBRIDGE"
fi

if grep -qF -- "$MHOSTS_MARK" /etc/hosts 2>/dev/null; then
    log "removing the $MHOSTS_MARK lines from /etc/hosts"
    tmp=$(mktemp)
    grep -vF -- "$MHOSTS_MARK" /etc/hosts >"$tmp"
    cat "$tmp" >/etc/hosts # in place: /etc/hosts may be a bind mount
    rm -f "$tmp"
fi

if [[ ${1:-} == --purge ]]; then
    log "removing $MSTATE"
    rm -rf "$MSTATE"
fi
log "down in $(awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1 - t0}')s"
exit 0
