#!/usr/bin/env bash
# Start a multi-node Slurm cluster on this one machine for the dlscale tests:
# cluster dlscale-multi, nodes dlscale-n1..dlscale-nN (N = $DLSCALE_MULTI_NODES,
# default 2), one CPU each, every slurmd in a network namespace and a UTS
# namespace of its own (address 198.18.0.(10+i) behind the bridge dlsbr0 =
# 198.18.0.1, hostname = node name), with its own slurmctld on the host.
# munged and slurmdbd are those of the single-node cluster (slurm-up.sh is run
# first when they are not running). Idempotent: skips what is done, restarts
# what a changed config needs, then waits until every node is idle.
# Run as root. State: $DLSCALE_MULTI_DIR (default /var/tmp/dlscale-slurm-multi).
# Client commands: SLURM_CONF=$DLSCALE_MULTI_DIR/etc/slurm.conf sinfo
# Stop with multinode-down.sh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
multi_settings
log() { printf '[slurm-multi %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
[[ $(id -u) == 0 ]] || die "run as root"
[[ $MNODES =~ ^[1-9][0-9]?$ ]] || die "DLSCALE_MULTI_NODES must be 1..99 (got '$MNODES')"
T0=$(date +%s.%N)

show_multi_logs() {
    local f
    for f in "$MSTATE"/log/*.log; do
        [[ -f $f ]] || continue
        printf '\n===== tail -n 25 %s =====\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
}

# --- 1. tools, and the shared munged + slurmdbd --------------------------------
if ! command -v ip >/dev/null; then
    log "installing iproute2"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
fi
for tool in nsenter unshare taskset hostname; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: util-linux, hostname)"
done
if ! command -v slurmd >/dev/null || ! alive "$STATE/run/munge/munged.pid" munged ||
    ! alive "$STATE/run/slurmdbd.pid" slurmdbd; then
    log "munged/slurmdbd not running: starting the single-node cluster (slurm-up.sh) first"
    bash "$HERE/slurm-up.sh"
fi
# From here on, Slurm commands talk to the multi-node cluster.
export SLURM_CONF=$MCONF

# --- 2. directories ------------------------------------------------------------
mkdir -p "$MSTATE"/{etc,log,run,spool/slurmctld}
chmod 755 "$MSTATE"
for i in $(seq 1 "$MNODES"); do
    node=$(mnode_name "$i")
    mkdir -p "$MSTATE/nodes/$node/spool"
    install -d -m 1777 "$MSTATE/nodes/$node/tmp" # node-local scratch, like /tmp
done

# CPUs this script may use (Cpus_allowed_list, e.g. "0-1,4"); node i gets the
# ((i-1) mod count)-th of them.
CPU_LIST=()
IFS=, read -ra parts <<<"$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)"
for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then
        mapfile -t -O "${#CPU_LIST[@]}" CPU_LIST < <(seq "${part%-*}" "${part#*-}")
    else
        CPU_LIST+=("$part")
    fi
done
mnode_cpu() { echo "${CPU_LIST[$((($1 - 1) % ${#CPU_LIST[@]}))]}"; }

# --- 3. network: bridge + one namespace per node -------------------------------
# IPv6 is switched off on every interface made here, so nothing (not even
# link-local neighbour discovery) goes out but IPv4 within 198.18.0.0/24. No
# node has a default route and the bridge has no uplink: the nodes reach only
# each other and the host's bridge address.
no_ipv6() { # no_ipv6 IFACE [NETNS]: best effort
    local f=/proc/sys/net/ipv6/conf/$1/disable_ipv6
    if [[ -n ${2:-} ]]; then
        nsenter --net="/run/netns/$2" sh -c "[ -w $f ] && echo 1 >$f" 2>/dev/null || true
    elif [[ -w $f ]]; then echo 1 >"$f"; fi
}
if ! ip link show "$MBRIDGE" >/dev/null 2>&1; then
    log "creating bridge $MBRIDGE ($MBRIDGE_ADDR/24)"
    ip link add "$MBRIDGE" type bridge
fi
no_ipv6 "$MBRIDGE"
[[ $(ip -4 -o addr show dev "$MBRIDGE") == *" $MBRIDGE_ADDR/24 "* ]] ||
    ip addr add "$MBRIDGE_ADDR/24" dev "$MBRIDGE"
ip link set "$MBRIDGE" up

# Nodes of an earlier, larger cluster (DLSCALE_MULTI_NODES lowered): remove.
for ns in /run/netns/dlscale-n*; do
    [[ -e $ns ]] || continue
    node=${ns##*/}
    i=${node#dlscale-n}
    [[ $i =~ ^[0-9]+$ ]] && ((i >= 1 && i <= MNODES)) && continue
    log "removing node $node (not in this cluster of $MNODES)"
    mnode_stop "$node"
    [[ $i =~ ^[0-9]+$ ]] && { ip link del "$(mnode_veth "$i")" 2>/dev/null || true; }
    ip netns del "$node" 2>/dev/null || true
done

for i in $(seq 1 "$MNODES"); do
    node=$(mnode_name "$i") addr=$(mnode_addr "$i") veth=$(mnode_veth "$i")
    if [[ ! -e /run/netns/$node ]]; then
        log "creating network namespace $node ($addr)"
        ip link del "$veth" 2>/dev/null || true # a veth left from a namespace gone
        ip netns add "$node"
    fi
    in_ns=(nsenter --net="/run/netns/$node")
    if ! ip link show "$veth" >/dev/null 2>&1 || ! "${in_ns[@]}" ip link show eth0 >/dev/null 2>&1; then
        ip link del "$veth" 2>/dev/null || true
        "${in_ns[@]}" ip link del eth0 2>/dev/null || true
        ip link add "$veth" type veth peer name eth0 netns "$node"
    fi
    no_ipv6 "$veth"
    no_ipv6 eth0 "$node"
    ip link set "$veth" master "$MBRIDGE"
    ip link set "$veth" up
    "${in_ns[@]}" ip link set lo up
    [[ $("${in_ns[@]}" ip -4 -o addr show dev eth0) == *" $addr/24 "* ]] ||
        "${in_ns[@]}" ip addr add "$addr/24" dev eth0
    "${in_ns[@]}" ip link set eth0 up
done

# --- 4. /etc/hosts: one marked line per node ----------------------------------
want_hosts=$(for i in $(seq 1 "$MNODES"); do
    printf '%s %s %s\n' "$(mnode_addr "$i")" "$(mnode_name "$i")" "$MHOSTS_MARK"
done)
if [[ $(grep -F -- "$MHOSTS_MARK" /etc/hosts || true) != "$want_hosts" ]]; then
    log "updating /etc/hosts"
    tmp=$(mktemp)
    { grep -vF -- "$MHOSTS_MARK" /etc/hosts || true; echo "$want_hosts"; } >"$tmp"
    cat "$tmp" >/etc/hosts # in place: /etc/hosts may be a bind mount
    rm -f "$tmp"
fi

# --- 5. config and TaskProlog from the templates -------------------------------
MEM_MB=$(awk -v n="$MNODES" '/^MemTotal:/ {print int($2 / 1024 * 0.9 / n)}' /proc/meminfo)
render() { # render TEMPLATE DEST MODE -> prints "changed" if DEST changed
    local tmp
    tmp=$(mktemp "$2.XXXX")
    sed -e "s|@MSTATE@|$MSTATE|g" -e "s|@HOST@|$HOST|g" -e "s|@CLUSTER@|$MCLUSTER|g" \
        -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" -e "s|@CTLD_PORT@|$MCTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$MSLURMD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" \
        -e "s|@BRIDGE@|$MBRIDGE|g" -e "s|@BRIDGE_ADDR@|$MBRIDGE_ADDR|g" -e "s|@NET@|$MNET|g" \
        -e "s|@NODES@|$MNODES|g" -e "s|@LAST_OCTET@|$((10 + MNODES))|g" \
        -e "s|@MEM_MB@|$MEM_MB|g" "$1" >"$tmp"
    chmod "$3" "$tmp"
    if cmp -s "$tmp" "$2"; then rm -f "$tmp"; else mv -f "$tmp" "$2" && echo changed; fi
}
render "$HERE/taskprolog.sh" "$MSTATE/etc/taskprolog.sh" 755 >/dev/null
render "$HERE/epilog.sh" "$MSTATE/etc/epilog.sh" 755 >/dev/null
conf_changed=$(render "$HERE/multinode.conf.in" "$MCONF" 644)
if [[ -n $conf_changed ]]; then
    for pidfile in "$MSTATE"/run/slurmd-*.pid; do
        [[ -e $pidfile ]] || continue
        stop_daemon "$pidfile" slurmd
    done
    stop_daemon "$MSTATE/run/slurmctld.pid" slurmctld
fi

# --- 6. accounting: the cluster and root's association in the shared slurmdbd -
wait_for 60 slurmdbd sacctmgr -n list cluster || { show_logs; die "slurmdbd not answering"; }
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$MCLUSTER"; then
    log "registering cluster $MCLUSTER"
    sacctmgr -i add cluster "$MCLUSTER" >/dev/null
fi
if ! sacctmgr -n -P list assoc cluster="$MCLUSTER" user=root format=account | grep -q .; then
    sacctmgr -i add user root account=root cluster="$MCLUSTER" >/dev/null
fi

# --- 7. slurmctld on the host, one slurmd per node in its namespaces -----------
if ! alive "$MSTATE/run/slurmctld.pid" slurmctld; then
    log "starting slurmctld (port $MCTLD_PORT)"
    slurmctld -f "$MCONF"
fi
wait_for 30 slurmctld scontrol ping || { show_multi_logs; die "slurmctld of $MCLUSTER not answering"; }

# Nodes whose slurmd starts below with nothing left running in their namespace,
# and when that was seen (epoch s): jobs that slurmctld has running there since
# before then lost their processes (a crash, or the namespaces were made anew).
declare -A FRESH=()
for i in $(seq 1 "$MNODES"); do
    node=$(mnode_name "$i") cpu=$(mnode_cpu "$i")
    pidfile=$MSTATE/run/slurmd-$node.pid
    if alive "$pidfile" slurmd; then
        pid=$(cat "$pidfile")
        # A slurmd outside the node's current namespace (made anew since) or on
        # another CPU than the node's now is restarted.
        if [[ $(netns_ino "/proc/$pid/ns/net") == "$(netns_ino "/run/netns/$node")" ]] &&
            [[ $(awk '/^Cpus_allowed_list:/ {print $2}' "/proc/$pid/status") == "$cpu" ]] &&
            grep -q '^ClusterName=dlscale-multi' "/proc/$pid/root/etc/slurm/slurm.conf" 2>/dev/null; then
            continue
        fi
        log "$node: slurmd (pid $pid) is in another namespace, on another CPU or sees another /etc/slurm: restarting it"
        stop_daemon "$pidfile" slurmd
    fi
    [[ -z $(pids_in_netns "/run/netns/$node") ]] && FRESH[$node]=$(date +%s)
    log "starting slurmd for $node ($(mnode_addr "$i"), CPU $cpu)"
    # nsenter, not `ip netns exec` (which remounts /sys); the slurmd daemonizes
    # and keeps the namespaces and the affinity, and passes them on to its jobs.
    # A mount namespace of its own shows this cluster's config dir at /etc/slurm, as on a
    # real node: the jobstep plugin strips SLURM_CONF from the environment of the srun it
    # runs inside a job, which then reads /etc/slurm/slurm.conf (the single-node cluster's
    # on the host) and cannot reach that controller from the node's namespace.
    nsenter --net="/run/netns/$node" unshare --uts --mount --propagation private taskset -c "$cpu" \
        sh -c 'hostname "$1" && mount --bind "$3" /etc/slurm && exec slurmd -N "$1" -f "$2"' \
        sh "$node" "$MCONF" "$(dirname "$MCONF")" </dev/null
    wait_for 15 "slurmd of $node" alive "$pidfile" slurmd || { show_multi_logs; die "slurmd of $node did not start"; }
done

# --- 8. wait until every node is idle (or busy with others' jobs) --------------
NODELIST="dlscale-n[1-$MNODES]"
nodes_ready() {
    local out node st bad=0
    out=$(sinfo -h -N -n "$NODELIST" -o '%N %T' 2>/dev/null) || return 1
    [[ $(wc -l <<<"$out") == "$MNODES" ]] || return 1
    while read -r node st; do
        case $st in
        idle | mixed | allocated | completing) ;;
        down* | drain*) bad=1; scontrol update nodename="$node" state=resume >/dev/null 2>&1 ;;
        *) bad=1 ;;
        esac
    done <<<"$out"
    return $bad
}
if ! wait_for 60 "nodes $NODELIST to be idle" nodes_ready; then
    sinfo -N -l >&2 || true
    show_multi_logs
    die "nodes $NODELIST did not become idle"
fi
# Jobs slurmctld still has running on a fresh node are dead there: cancel them,
# or they would hold the nodes until their time limit (Slurm itself notices only
# at a later node registration, if at all).
for node in "${!FRESH[@]}"; do
    lost=()
    while read -r job start; do
        [[ -n $job && $start != N/A ]] || continue
        (($(date -d "$start" +%s) < FRESH[$node])) && lost+=("$job")
    done < <(squeue -h -w "$node" -t RUNNING,SUSPENDED -o '%i %S' 2>/dev/null)
    if ((${#lost[@]})); then
        log "$node: cancelling job(s) ${lost[*]}: slurmctld had them running there, but nothing ran in its namespace"
        scancel "${lost[@]}" || true
    fi
done
log "cluster $MCLUSTER up in $(awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1 - t0}')s:" \
    "$(sinfo -h -N -o '%N %T' | tr '\n' ' ')(SLURM_CONF=$MCONF)"
