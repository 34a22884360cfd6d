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

# The default config goes with the daemons: a link left to a stopped controller makes every Slurm
# client command wait ~9 s for it, and with them every Snakemake start, whatever its executor
# (snakemake-executor-plugin-slurm runs `scontrol show config` when Snakemake loads its plugins).
# slurm-up.sh links it again; a config of the machine's own that it moved aside comes back.
if [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$STATE/etc/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
    original=$(ls -1 /etc/slurm/slurm.conf.orig.* 2>/dev/null | sort -V | tail -n 1)
    if [[ -n $original ]]; then
        log "restoring $original as /etc/slurm/slurm.conf"
        mv "$original" /etc/slurm/slurm.conf
    fi
fi

if [[ ${1:-} == --purge ]]; then
    log "removing $STATE"
    rm -rf "$STATE"
fi
exit 0
