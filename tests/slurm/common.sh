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
