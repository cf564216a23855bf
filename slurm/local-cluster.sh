#!/usr/bin/env bash
# A real two-node SLURM cluster (nodes n1, n2) on this one machine, for zmdist's SLURM tests and for
# trying `zmdist submit --cluster slurm` on a laptop or CI runner. Needs root and Debian/Ubuntu packages.
#
#   bash slurm/local-cluster.sh up       # install slurm-wlm + munge if missing, start, wait for 2 idle nodes
#   bash slurm/local-cluster.sh status   # sinfo + squeue (exit 1 when the cluster is not up)
#   bash slurm/local-cluster.sh down     # stop the daemons (scontrol shutdown + munged)
#
# `up` when the cluster already answers with 2 nodes is a no-op. State, spool and logs live in
# $ZMDIST_SLURM_DIR (default /var/tmp/zmdist-slurm); daemon logs are in its log/ folder.
set -euo pipefail

DIR="${ZMDIST_SLURM_DIR:-/var/tmp/zmdist-slurm}"
WAIT_S="${ZMDIST_SLURM_WAIT_S:-60}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
NODES=(n1 n2)

die() { echo "local-cluster: error: $*" >&2; exit 1; }
say() { echo "local-cluster: $*"; }

idle_nodes() {  # number of nodes sinfo reports idle (or mixed/allocated: they are up)
    timeout 10 sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc)/ {n++} END {print n+0}'
}

is_up() { command -v sinfo >/dev/null && [ "$(idle_nodes)" -ge ${#NODES[@]} ]; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "packages missing (${missing[*]}) and not root: run as root, or set ZMDIST_SLURM_TESTS=0 to deselect the SLURM tests"
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d: keep the packages' own service scripts from starting daemons with the stock config
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; added_policy=1; fi
    { apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }; } ||
        { [ $added_policy = 1 ] && rm -f $policy; die "apt-get install ${missing[*]} failed"; }
    [ $added_policy = 1 ] && rm -f $policy
    return 0
}

write_config() {
    local host cpus
    host="$(hostname)"
    cpus=2
    mkdir -p "$CONF_DIR" "$DIR"/{state,log,run} "$DIR"/spool/n1 "$DIR"/spool/n2
    cat > "$CONF.new" <<CONF
# Written by zmdist slurm/local-cluster.sh: two nodes on one host (test cluster, not for production).
ClusterName=zmdist-local
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldParameters=preempt_send_user_signal
MpiDefault=none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=17001-17002 CPUs=$cpus RealMemory=9000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
    mv "$CONF.new" "$CONF"
}

hosts_entry() {  # node names resolve like on a real cluster (MASTER_ADDR = first host of the node list)
    grep -Eq '^127\.0\.0\.1([[:space:]].*)?[[:space:]]n1([[:space:]]|$)' /etc/hosts ||
        echo "127.0.0.1 ${NODES[*]}  # zmdist local SLURM cluster" >> /etc/hosts
}

start_munge() {
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        [ -s /etc/munge/munge.key ] || { command -v mungekey >/dev/null && mungekey -c -f; } ||
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
        if id munge >/dev/null 2>&1; then
            runuser -u munge -- munged 2>/dev/null || munged --force
        else
            munged --force
        fi
        sleep 0.5
        munge -n | unmunge >/dev/null || die "munged does not answer"
    fi
}

up() {
    if is_up; then say "already up: $(idle_nodes) nodes"; return 0; fi
    [ "$(id -u)" -eq 0 ] || die "must run as root (set ZMDIST_SLURM_TESTS=0 to deselect the SLURM tests)"
    install_packages
    write_config
    hosts_entry
    start_munge
    # Restart any daemon left from an earlier run with another config.
    scontrol shutdown >/dev/null 2>&1 || true
    for f in "$DIR"/run/*.pid; do
        [ -e "$f" ] || continue
        pid="$(cat "$f")"; kill "$pid" 2>/dev/null || true; rm -f "$f"
    done
    sleep 0.5
    slurmctld -c || die "slurmctld did not start: see $DIR/log/slurmctld.log"
    for n in "${NODES[@]}"; do
        slurmd -N "$n" || die "slurmd -N $n did not start: see $DIR/log/slurmd-$n.log"
    done
    local waited=0
    until is_up; do
        if [ "$waited" -ge "$WAIT_S" ]; then
            sinfo >&2 || true
            die "sinfo does not show ${#NODES[@]} idle nodes after ${WAIT_S}s: see $DIR/log/"
        fi
        sleep 1; waited=$((waited + 1))
        # nodes that came up DOWN (e.g. after an unclean stop) are put back in service
        [ $((waited % 5)) -eq 0 ] && scontrol update nodename=n[1-2] state=resume >/dev/null 2>&1 || true
    done
    say "up: $(idle_nodes) nodes"; sinfo
}

down() {
    if command -v scontrol >/dev/null; then scontrol shutdown >/dev/null 2>&1 || true; fi
    sleep 1
    for f in "$DIR"/run/*.pid; do
        [ -e "$f" ] || continue
        pid="$(cat "$f")"; kill "$pid" 2>/dev/null || true; rm -f "$f"
    done
    if [ -e /run/munge/munged.pid ]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
    say "down"
}

status() {
    if is_up; then sinfo; squeue; return 0; fi
    echo "local-cluster: not up (run: bash slurm/local-cluster.sh up)" >&2
    return 1
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
