#!/usr/bin/env bash
# Start a real single-node Slurm cluster (with accounting) for the dlscale tests.
# Idempotent: installs what is missing, starts what is not running, then waits
# until the node is idle. Run as root. State and logs: $DLSCALE_SLURM_DIR
# (default /var/tmp/dlscale-slurm). Stop with slurm-down.sh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
[[ $(id -u) == 0 ]] || die "run as root"
T0=$(date +%s)

# --- 1. packages (apt-get update only when something is missing) -------------
PKGS=(slurm-wlm slurmdbd mariadb-server munge)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    # Keep maintainer scripts from starting the packaged services: we start our own.
    guard=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        guard=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ -n $guard ]] && rm -f /usr/sbin/policy-rc.d
fi

# --- 2. directories ----------------------------------------------------------
mkdir -p "$STATE"/{etc,log,run,spool/slurmctld,spool/slurmd}
chmod 755 "$STATE"
install -d -o munge -g munge -m 700 "$STATE/munge"
install -d -o munge -g munge -m 755 "$STATE/run/munge"
install -d -o mysql -g mysql -m 755 "$STATE/run/mysqld"
install -d -o mysql -g mysql -m 750 "$STATE/mysql"

# --- 3. munge ----------------------------------------------------------------
if [[ ! -s $STATE/munge/munge.key ]]; then
    log "creating munge key"
    runuser -u munge -- mungekey --create --keyfile="$STATE/munge/munge.key"
fi
if ! alive "$STATE/run/munge/munged.pid" munged; then
    log "starting munged"
    runuser -u munge -- munged --key-file="$STATE/munge/munge.key" \
        --socket="$MUNGE_SOCKET" --pid-file="$STATE/run/munge/munged.pid" \
        --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed"
    wait_for 10 munged munge -S "$MUNGE_SOCKET" -n || { show_logs; die "munged did not start"; }
fi

# --- 4. MariaDB: Unix socket only (skip-networking) --------------------------
if [[ ! -d $STATE/mysql/mysql ]]; then
    log "initialising MariaDB datadir"
    mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/mysql" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$STATE/log/mariadb-install.log" 2>&1 ||
        { tail -n 30 "$STATE/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
fi
if ! alive "$STATE/run/mysqld/mysqld.pid" mariadbd; then
    log "starting mariadbd"
    # innodb settings: what slurmdbd recommends (it warns otherwise).
    setsid mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" \
        --socket="$MYSQL_SOCKET" --pid-file="$STATE/run/mysqld/mysqld.pid" \
        --skip-networking --log-error="$STATE/log/mariadb.log" \
        --innodb-buffer-pool-size=1G --innodb-log-file-size=64M \
        --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadbd mariadb-admin --no-defaults --socket="$MYSQL_SOCKET" ping ||
        { show_logs; die "mariadbd did not start"; }
fi

# Database and user (password made once, kept in $STATE/etc, mode 600).
umask 077
[[ -s $STATE/etc/db.pass ]] || od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$STATE/etc/db.pass"
umask 022
DB_PASS=$(cat "$STATE/etc/db.pass")
mariadb --no-defaults --socket="$MYSQL_SOCKET" -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# --- 5. Slurm configs from the templates -------------------------------------
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
render() { # render TEMPLATE DEST MODE -> prints "changed" if DEST changed
    local tmp
    tmp=$(mktemp "$2.XXXX")
    sed -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" \
        -e "s|@MEM_MB@|$MEM_MB|g" -e "s|@DB_PASS@|$DB_PASS|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@DBD_PORT@|$DBD_PORT|g" "$1" >"$tmp"
    chmod "$3" "$tmp"
    if cmp -s "$tmp" "$2"; then rm -f "$tmp"; else mv -f "$tmp" "$2" && echo changed; fi
}
dbd_changed=$(render "$HERE/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf" 600)
conf_changed=$(render "$HERE/slurm.conf.in" "$STATE/etc/slurm.conf" 644)
render "$HERE/epilog.sh" "$STATE/etc/epilog.sh" 755 >/dev/null
# A changed config takes effect by restarting the daemons that read it.
if [[ -n $dbd_changed ]]; then stop_daemon "$STATE/run/slurmdbd.pid" slurmdbd; fi
if [[ -n $conf_changed ]]; then
    stop_daemon "$STATE/run/slurmd.pid" slurmd
    stop_daemon "$STATE/run/slurmctld.pid" slurmctld
fi

# Default config path for client commands run from any shell.
mkdir -p /etc/slurm
if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    mv /etc/slurm/slurm.conf "/etc/slurm/slurm.conf.orig.$(date +%s)"
fi
ln -sfn "$STATE/etc/slurm.conf" /etc/slurm/slurm.conf

# --- 6. slurmdbd, then the cluster and root's association -------------------
if ! alive "$STATE/run/slurmdbd.pid" slurmdbd; then
    log "starting slurmdbd"
    # libmariadb connects to "localhost" through the socket named here.
    MYSQL_UNIX_PORT=$MYSQL_SOCKET slurmdbd
fi
wait_for 60 slurmdbd sacctmgr -n list cluster || { show_logs; die "slurmdbd not answering"; }
if ! sacctmgr -n -P list cluster format=cluster | grep -qx dlscale-test; then
    log "registering cluster dlscale-test"
    sacctmgr -i add cluster dlscale-test >/dev/null
fi
# Adding a cluster gives root an association under account "root"; make sure.
if ! sacctmgr -n -P list assoc cluster=dlscale-test user=root format=account | grep -q .; then
    sacctmgr -i add user root account=root cluster=dlscale-test >/dev/null
fi

# --- 7. slurmctld and slurmd -------------------------------------------------
if ! alive "$STATE/run/slurmctld.pid" slurmctld; then
    log "starting slurmctld"
    slurmctld
fi
wait_for 30 slurmctld scontrol ping || { show_logs; die "slurmctld not answering"; }
if ! alive "$STATE/run/slurmd.pid" slurmd; then
    log "starting slurmd"
    slurmd
fi

# --- 8. wait until the node is idle (or busy with others' jobs) -------------
node_ready() {
    local st
    st=$(sinfo -h -n "$HOST" -o %T 2>/dev/null) || return 1
    case $st in
    idle | mixed | allocated | completing) return 0 ;;
    down* | drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 ;;
    esac
    return 1
}
if ! wait_for 60 "node $HOST to be idle" node_ready; then
    sinfo -N -l >&2 || true
    show_logs
    die "node $HOST did not become idle"
fi
log "cluster up in $(($(date +%s) - T0))s: $(sinfo -h -o '%P %D %T %c' | tr '\n' ' ')(SLURM_CONF=$SLURM_CONF)"
