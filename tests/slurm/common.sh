# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the scripts
# Shared settings and helpers for slurm-up.sh / slurm-down.sh (sourced, not run).
# Everything the test cluster writes lives under $STATE.

STATE=${DLSCALE_SLURM_DIR:-/var/tmp/dlscale-slurm}
HOST=$(hostname -s)
CTLD_PORT=${DLSCALE_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${DLSCALE_SLURMD_PORT:-6818}
DBD_PORT=${DLSCALE_SLURMDBD_PORT:-6819}
CPUS=${DLSCALE_SLURM_CPUS:-4}          # declared, not real (config_overrides)

MUNGE_SOCKET=$STATE/run/munge/munge.socket.2
MYSQL_SOCKET=$STATE/run/mysqld/mysqld.sock
# Our own slurm commands read this config; /etc/slurm/slurm.conf links to it
# so that plain `sinfo`/`sbatch` in other shells find it too.
export SLURM_CONF=$STATE/etc/slurm.conf

log() { printf '[slurm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# alive PIDFILE COMM: true if the pid in PIDFILE runs a process named COMM
# (not a zombie: the sandbox's PID 1 may be slow to reap daemons).
alive() {
    local pid stat
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $stat == "$pid ($2) "[^Z]* ]]
}

# stop_daemon PIDFILE COMM: TERM, wait up to 20 s, then KILL. Never fails.
stop_daemon() {
    local pidfile=$1 comm=$2 pid
    if ! alive "$pidfile" "$comm"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(cat "$pidfile")
    log "stopping $comm (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
        alive "$pidfile" "$comm" || break
        sleep 0.5
    done
    if alive "$pidfile" "$comm"; then
        log "$comm did not stop in 20 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD until it succeeds (wall-clock bound).
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    while ((SECONDS < deadline)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    log "timed out waiting for $what"
    return 1
}

# Tails of every daemon log, for error messages.
show_logs() {
    local f
    for f in "$STATE"/log/*.log "$STATE"/munge/munged.log; do
        [[ -f $f ]] || continue
        printf '\n===== tail -n 25 %s =====\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
}

# --- Multi-node test cluster (multinode-up.sh / multinode-down.sh) ------------
# A second cluster, dlscale-multi, whose nodes dlscale-n1..nN each run their
# slurmd in a network namespace of their own behind the bridge $MBRIDGE. It
# shares munged and slurmdbd with the single-node cluster above. The addresses
# are fixed to the RFC 2544 test range 198.18.0.0/24: nothing is ever sent
# outside it (and loopback).
multi_settings() {
    MSTATE=${DLSCALE_MULTI_DIR:-/var/tmp/dlscale-slurm-multi}
    MNODES=${DLSCALE_MULTI_NODES:-2}
    MCTLD_PORT=${DLSCALE_MULTI_SLURMCTLD_PORT:-6827}
    MSLURMD_PORT=${DLSCALE_MULTI_SLURMD_PORT:-6828}
    MCONF=$MSTATE/etc/slurm.conf
    MCLUSTER=dlscale-multi
    MBRIDGE=dlsbr0
    MNET=198.18.0
    MBRIDGE_ADDR=$MNET.1
    MHOSTS_MARK='# dlscale-multinode'
}
# Node i (1-based): its name, its address, the host side of its veth pair.
mnode_name() { echo "dlscale-n$1"; }
mnode_addr() { echo "$MNET.$((10 + $1))"; }
mnode_veth() { echo "dlsv-n$1"; }

# Inode of a network namespace (a /run/netns file or /proc/PID/ns/net); empty if none.
netns_ino() { stat -L -c %i "$1" 2>/dev/null || true; }

# pids_in_netns NETNS_FILE: pids of the (non-zombie) processes in that network namespace.
pids_in_netns() {
    local ino pid stat
    ino=$(netns_ino "$1")
    [[ -n $ino ]] || return 0
    for pid in $(stat -L -c '%i %n' /proc/[0-9]*/ns/net 2>/dev/null |
        awk -v ino="$ino" '$1 == ino {split($2, p, "/"); print p[3]}'); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        [[ $stat == "$pid ("*") Z "* ]] || echo "$pid"
    done
    return 0
}

# mnode_stop NODE: stop the node's slurmd (TERM, then KILL), then every process
# still in its network namespace (job steps, daemons a job left). Never fails.
mnode_stop() {
    local node=$1 ns=/run/netns/$1 pids
    stop_daemon "$MSTATE/run/slurmd-$node.pid" slurmd
    pids=$(pids_in_netns "$ns")
    [[ -n $pids ]] || return 0
    log "$node: stopping what still runs in its namespace: pids $(echo $pids)"
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 20); do
        [[ -z $(pids_in_netns "$ns") ]] && return 0
        sleep 0.5
    done
    pids=$(pids_in_netns "$ns")
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    return 0
}
