#!/usr/bin/env bash
# Stop the daemons that slurm-up.sh started (found by their pid files under
# $DLSCALE_SLURM_DIR, default /var/tmp/dlscale-slurm). Idempotent: a daemon
# that is not running is skipped, and the script exits 0 either way.
#   --purge   also delete the state directory (database, key, logs, configs).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"

stop_daemon "$STATE/run/slurmd.pid" slurmd
stop_daemon "$STATE/run/slurmctld.pid" slurmctld
stop_daemon "$STATE/run/slurmdbd.pid" slurmdbd
stop_daemon "$STATE/run/mysqld/mysqld.pid" mariadbd
stop_daemon "$STATE/run/munge/munged.pid" munged

if [[ ${1:-} == --purge ]]; then
    log "removing $STATE"
    rm -rf "$STATE"
    [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$STATE/etc/slurm.conf" ]] &&
        rm -f /etc/slurm/slurm.conf
fi
exit 0
