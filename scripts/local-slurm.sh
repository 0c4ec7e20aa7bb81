#!/usr/bin/env bash
# local-slurm.sh - a REAL Slurm cluster on this machine, for hpc-ft's tests: node localhost, and with
# --nodes N a partition of N more nodes, each in its own network and UTS namespace.
#
# Debian 12 packages (slurm-wlm 22.05), no systemd needed. Node "localhost" with
# 8 advertised CPUs, 4 fake GPUs (gres/gpu backed by /dev/null links), a large
# advertised memory, accounting through slurmdbd + MariaDB (sacct works, which
# submitit needs), partitions "debug" (default) and "gpu".
#
# Usage (as root):
#   scripts/local-slurm.sh start [--nodes N]  install what is missing, start everything, wait for the
#                                          nodes to be idle; prints "export SLURM_CONF=..." on stdout.
#                                          --nodes N (N >= 2) adds partition "multi" of N more nodes
#                                          (node1..nodeN), each slurmd in its own network and UTS
#                                          namespace (see "Multi-node" below); N=1 is the single node.
#                                          Without --nodes, the count of the last start is kept.
#   scripts/local-slurm.sh stop [--purge]  cancel all jobs, stop the daemons by PID, remove the
#                                          namespaces, links and bridge of the nodes
#                                          (--purge: also delete the state dir)
#   scripts/local-slurm.sh restart [--nodes N]  stop + start
#   scripts/local-slurm.sh status          exit 0 + short summary when up and usable, exit 1 otherwise
#   scripts/local-slurm.sh env             print the env line (export SLURM_CONF=...)
#   scripts/local-slurm.sh logs [N]        tail the daemon logs
#
# Progress and errors go to stderr; only the env line goes to stdout, so
#   eval "$(scripts/local-slurm.sh start)"
# works. /etc/slurm/slurm.conf is also symlinked to the generated config, so
# plain sbatch/squeue/sacct work without sourcing anything.
#
# Cluster layout (generated $HPC_FT_SLURM_ROOT/etc/slurm.conf):
#   node localhost: CPUs=8, RealMemory=512 GiB, Gres=gpu:4 (CUDA_VISIBLE_DEVICES=0..3)
#   partition debug  Default=YES MaxTime=INFINITE   DefaultTime=1h
#   partition gpu    Default=NO  MaxTime=2-00:00:00 DefaultTime=1h (same node)
#   CR_Core_Memory with DefMemPerCPU=1024; EnforcePartLimits=ALL (a job over a
#   partition limit is rejected by sbatch instead of pending forever);
#   OverTimeLimit=0, KillWait=5, cred_expire=10 (requeued jobs restart after ~11 s),
#   SlurmdTimeout=30 (a killed slurmd makes the node DOWN and its jobs NODE_FAIL within ~40 s),
#   bf_interval=2,sched_interval=2; accounting with AccountingStorageTRES=gres/gpu.
#
# Multi-node (start --nodes N, N >= 2): node "localhost" and partitions debug/gpu stay as above
# (single-node jobs and tests see the same cluster); partition "multi" (Default=NO) holds N more
# nodes node1..nodeN with the same CPUs/memory/fake GPUs. Each runs its slurmd in its own network
# namespace (address $SUBNET.1<i> on a veth pair joined to a bridge the script creates, which
# carries $SUBNET.1 for slurmctld) and UTS namespace (hostname node<i>). Per-namespace files under
# /etc/netns/<ns>/ (bind-mounted by `ip netns exec`): hosts (node names -> bridge addresses, so
# torch's c10d rendezvous and gloo find each other) and slurm/ (links to this cluster's config).
# The namespaces have no route beyond the bridge: all traffic stays on this machine. All nodes
# share the host's munged (same key, its socket is a file). Per-node slurmd paths use %n
# ($RUN/slurmd-<node>.pid, $LOG/slurmd-<node>.log, spool/d-<node>); $RUN/slurmd.pid links to
# localhost's.
#
# Env knobs [defaults]:
#   HPC_FT_SLURM_ROOT      state dir: configs, spool, logs, pid files, DB  [/tmp/hpc-ft-slurm]
#   HPC_FT_SLURM_CPUS      CPUs advertised for the node (may exceed nproc)  [8]
#   HPC_FT_SLURM_GPUS      fake GPUs                                         [4]
#   HPC_FT_SLURM_MEM_MB    RealMemory advertised (may exceed real RAM)       [524288 = 512 GiB]
#   HPC_FT_SLURM_DB_PORT   MariaDB TCP port on 127.0.0.1                     [13306]
#   HPC_FT_SLURM_CTLD_PORT / HPC_FT_SLURM_SLURMD_PORT / HPC_FT_SLURM_DBD_PORT  [6817/6818/6819]
#                          (a second cluster on the same machine needs its own ports, root and subnet)
#   HPC_FT_SLURM_NODES     node count when start has no --nodes              [that of the last start, else 1]
#   HPC_FT_SLURM_SUBNET    first three octets of the private /24 on the bridge [10.213.<ctld port mod 256>]
#   HPC_FT_SLURM_WAIT_S    max seconds to wait for each daemon / the node    [120]
#   HPC_FT_SLURM_LINK_ETC  1 = symlink /etc/slurm/{slurm,gres}.conf          [1]
#   HPC_FT_SLURM_SLURMD_TIMEOUT  seconds without an answer from slurmd before  [30]
#                          the node is marked DOWN and its jobs end NODE_FAIL (Slurm's default is 300;
#                          30 lets tests/slurm/test_slurm_faults.py see a killed slurmd within a minute)
set -uo pipefail

ROOT=${HPC_FT_SLURM_ROOT:-/tmp/hpc-ft-slurm}
CPUS=${HPC_FT_SLURM_CPUS:-8}
GPUS=${HPC_FT_SLURM_GPUS:-4}
MEM_MB=${HPC_FT_SLURM_MEM_MB:-524288}
DB_PORT=${HPC_FT_SLURM_DB_PORT:-13306}
WAIT_S=${HPC_FT_SLURM_WAIT_S:-120}
LINK_ETC=${HPC_FT_SLURM_LINK_ETC:-1}
SLURMD_TIMEOUT=${HPC_FT_SLURM_SLURMD_TIMEOUT:-30}

NODE=localhost
CLUSTER=hpcft
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=hpcft-local-only
CTLD_PORT=${HPC_FT_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${HPC_FT_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${HPC_FT_SLURM_DBD_PORT:-6819}
NODES_ENV=${HPC_FT_SLURM_NODES:-}

ETC=$ROOT/etc
RUN=$ROOT/run
LOG=$ROOT/log
CONF=$ETC/slurm.conf
DB_SOCK=$RUN/mysqld.sock
NODES_FILE=$ETC/nodes   # the node count of the last start
export SLURM_CONF=$CONF

# multi-node: names of what start --nodes N creates (unique per cluster through the slurmctld port)
SUBNET=${HPC_FT_SLURM_SUBNET:-}
BRIDGE=hpcft-br$CTLD_PORT
NODES=1      # set by resolve_nodes
NS_NODES=()  # node1..nodeN when NODES >= 2
ns_name() { echo "hpcft$CTLD_PORT-$1"; }        # network namespace of node <name>
veth_name() { echo "hpcft${CTLD_PORT}v${1#node}"; } # host end of node <name>'s veth pair (<= 15 chars)
node_ip() { echo "$SUBNET.$((10 + ${1#node}))"; }

# ------------------------------------------------------------------ helpers ---
T0=$(date +%s.%N)
log() {
  local dt
  dt=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%5.1f", b - a }')
  printf '[local-slurm %ss] %s\n' "$dt" "$*" >&2
}
die() {
  log "ERROR: $*"
  exit 1
}

# show_log <name>: tail of a daemon's log(s), to stderr
show_log() {
  local f
  for f in "$LOG/$1.log" "$LOG/$1.stdout" "$LOG/$1.err"; do
    [ -s "$f" ] || continue
    echo "----- tail -n 30 $f -----" >&2
    tail -n 30 "$f" >&2
  done
}
# fail <daemon> <message>: error with the daemon's log tail
fail() {
  show_log "$1"
  if [ -n "$LAST_OUT" ]; then
    echo "----- output of the last check -----" >&2
    printf '%s\n' "$LAST_OUT" | tail -n 15 >&2
  fi
  die "$2 (logs in $LOG)"
}

# alive <pidfile> <comm>: the pid file names a live process whose command starts with <comm>
alive() {
  local f=$1 name=$2 pid
  [ -s "$f" ] || return 1
  pid=$(head -n1 "$f" 2>/dev/null | tr -dc '0-9')
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name"* ]] || return 1
  # a killed daemon whose parent does not reap it lingers as a zombie
  local st
  st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
pid_of() { head -n1 "$1" 2>/dev/null | tr -dc '0-9'; }

# stop_pid <pidfile> <comm>: SIGTERM, wait up to 30 s, then SIGKILL
stop_pid() {
  local f=$1 name=$2 pid i
  alive "$f" "$name" || { rm -f "$f"; return 0; }
  pid=$(pid_of "$f")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 150); do
    alive "$f" "$name" || { rm -f "$f"; return 0; }
    sleep 0.2
  done
  log "$name (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.5
  rm -f "$f"
}

# port_busy <port>: something listens on 127.0.0.1:<port>
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# spawn [--bg] <logfile> <cmd...>: run a command detached from our stdio and from
# any inherited file descriptors (so `$(local-slurm.sh start)` or a CI runner is
# not kept waiting by a daemon holding its pipe open). Daemons that fork into the
# background themselves run in the foreground here; --bg is for those that do not.
spawn() {
  local bg=0
  [ "$1" = --bg ] && { bg=1; shift; }
  local out=$1
  shift
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null
    done
    if [ $bg = 1 ]; then
      "$@" </dev/null >>"$out" 2>&1 &
    else
      exec "$@" </dev/null >>"$out" 2>&1
    fi
  )
}

# wait_until <seconds> <cmd...>: retry until the command succeeds; the output of
# the last failed try stays in $LAST_OUT (shown by fail)
LAST_OUT=""
wait_until() {
  local limit=$1
  shift
  local deadline=$(($(date +%s) + limit))
  until LAST_OUT=$("$@" 2>&1); do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.3
  done
  LAST_OUT=""
}

check_knobs() {
  local k v
  for k in HPC_FT_SLURM_CPUS:$CPUS HPC_FT_SLURM_GPUS:$GPUS HPC_FT_SLURM_MEM_MB:$MEM_MB \
    HPC_FT_SLURM_DB_PORT:$DB_PORT HPC_FT_SLURM_WAIT_S:$WAIT_S HPC_FT_SLURM_SLURMD_TIMEOUT:$SLURMD_TIMEOUT \
    HPC_FT_SLURM_CTLD_PORT:$CTLD_PORT HPC_FT_SLURM_SLURMD_PORT:$SLURMD_PORT HPC_FT_SLURM_DBD_PORT:$DBD_PORT; do
    v=${k#*:}
    [[ "$v" =~ ^[0-9]+$ ]] || die "${k%%:*} must be a whole number, got '$v'"
  done
  [ "$CPUS" -ge 1 ] || die "HPC_FT_SLURM_CPUS must be >= 1"
  [[ "$ROOT" = /* ]] || die "HPC_FT_SLURM_ROOT must be an absolute path, got '$ROOT'"
}

# resolve_nodes [N]: the node count: --nodes N, else HPC_FT_SLURM_NODES, else the last start's, else 1
resolve_nodes() {
  local n=${1:-$NODES_ENV}
  [ -n "$n" ] || n=$(cat "$NODES_FILE" 2>/dev/null)
  [ -n "$n" ] || n=1
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 8 ] ||
    die "--nodes / HPC_FT_SLURM_NODES must be a whole number from 1 to 8, got '$n'"
  NODES=$n
  NS_NODES=()
  if [ "$NODES" -ge 2 ]; then
    local i
    for ((i = 1; i <= NODES; i++)); do NS_NODES+=("node$i"); done
  fi
  [ -n "$SUBNET" ] || SUBNET=10.213.$((CTLD_PORT % 256))
  [[ "$SUBNET" =~ ^10\.([0-9]{1,3})\.([0-9]{1,3})$ ]] && [ "${BASH_REMATCH[1]}" -le 255 ] &&
    [ "${BASH_REMATCH[2]}" -le 255 ] ||
    die "HPC_FT_SLURM_SUBNET must be the first three octets of a private 10.x.y.0/24, e.g. 10.213.7; got '$SUBNET'"
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (daemons, apt-get, /etc/slurm)"; }

# ------------------------------------------------------------------ install ---
PKGS=(munge slurm-client slurmctld slurmd slurmdbd slurm-wlm-mysql-plugin mariadb-server)

install_packages() {
  local missing=() p
  [ ${#NS_NODES[@]} -gt 0 ] && PKGS+=(iproute2)   # ip netns / link / addr for the nodes' namespaces
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get"
  log "installing Debian packages: ${missing[*]} (takes a minute or two)"
  # No systemd/init here: keep the maintainer scripts from starting services
  # (invoke-rc.d asks policy-rc.d; 101 = action forbidden). Removed afterwards
  # only if we created it.
  local our_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    our_policy=1
  fi
  local apt_log=$LOG/apt.log rc=0 try
  export DEBIAN_FRONTEND=noninteractive
  for try in 1 2 3; do
    rc=0
    apt-get -o DPkg::Lock::Timeout=300 update -q >"$apt_log" 2>&1 &&
      apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null >>"$apt_log" 2>&1 || rc=$?
    [ $rc = 0 ] && break
    log "apt-get failed (attempt $try, rc $rc); retrying in 5 s"
    sleep 5
  done
  [ $our_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ $rc != 0 ]; then
    tail -n 40 "$apt_log" >&2
    die "apt-get install ${missing[*]} failed (full log: $apt_log)"
  fi
  log "packages installed"
}

# ------------------------------------------------------------------- config ---
CHANGED=0
# put_file <path> <mode> <content>: write only when the content differs
put_file() {
  if [ ! -f "$1" ] || [ "$(cat "$1")" != "$3" ]; then
    if ! { printf '%s\n' "$3" >"$1.new" && chmod "$2" "$1.new" && mv -f "$1.new" "$1"; }; then
      die "cannot write $1"
    fi
    CHANGED=1
  fi
}

write_configs() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$ROOT/spool/ctld" "$ROOT/spool/d" "$ROOT/dev" || die "cannot create $ROOT"
  if [ ${#NS_NODES[@]} -gt 0 ]; then
    local d
    for d in "$NODE" "${NS_NODES[@]}"; do mkdir -p "$ROOT/spool/d-$d" || die "cannot create $ROOT/spool/d-$d"; done
  fi

  # multi-node: slurmctld is reached on the bridge address (each node's own loopback is its own);
  # one config for every slurmd, so their files are told apart by node name (%n)
  local ctld_host=localhost slurmd_pid=$RUN/slurmd.pid slurmd_spool=$ROOT/spool/d slurmd_log=$LOG/slurmd.log
  local gres_nodes=$NODE ns_lines="" n
  if [ ${#NS_NODES[@]} -gt 0 ]; then
    ctld_host="localhost($SUBNET.1)"
    slurmd_pid=$RUN/slurmd-%n.pid slurmd_spool=$ROOT/spool/d-%n slurmd_log=$LOG/slurmd-%n.log
    gres_nodes="$NODE,node[1-$NODES]"
  fi
  local gres_types="" node_gres="" gres_conf="# no GPUs"
  if [ "$GPUS" -gt 0 ]; then
    # slurmd 22.05 drops a gpu GRES without File= and rejects regular files;
    # symlinks to the /dev/null character device are accepted.
    local i
    for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$ROOT/dev/gpu$i"; done
    gres_types="GresTypes=gpu"
    node_gres=" Gres=gpu:$GPUS"
    if [ "$GPUS" = 1 ]; then
      gres_conf="NodeName=$gres_nodes Name=gpu File=$ROOT/dev/gpu0"
    else
      gres_conf="NodeName=$gres_nodes Name=gpu File=$ROOT/dev/gpu[0-$((GPUS - 1))]"
    fi
  fi
  local multi_part=""
  if [ ${#NS_NODES[@]} -gt 0 ]; then
    # before localhost: while a cluster's only node is "localhost", Slurm answers every node-name
    # lookup with it, and node1 would be refused as "Duplicated NodeHostName"
    ns_lines="# partition multi: nodes in their own network + UTS namespaces (scripts/local-slurm.sh start --nodes N)
"
    for n in "${NS_NODES[@]}"; do
      ns_lines+="NodeName=$n NodeAddr=$(node_ip "$n") CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB$node_gres State=UNKNOWN
"
    done
    multi_part="
PartitionName=multi Nodes=node[1-$NODES] Default=NO MaxTime=INFINITE DefaultTime=01:00:00 State=UP"
  fi

  put_file "$CONF" 644 "# generated by hpc-ft scripts/local-slurm.sh - edits are overwritten
ClusterName=$CLUSTER
SlurmctldHost=$ctld_host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# requeued jobs become eligible cred_expire+1 s later (default 120 s)
AuthInfo=cred_expire=10
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$ROOT/spool/ctld
SlurmdSpoolDir=$slurmd_spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$slurmd_log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
InactiveLimit=0
MinJobAge=300
KillWait=5
OverTimeLimit=0
# a node whose slurmd stops answering is DOWN after this many seconds (its jobs: NODE_FAIL, requeued)
SlurmdTimeout=$SLURMD_TIMEOUT
# reject at submit time a job that can never run in its partition (e.g. --time > MaxTime)
EnforcePartLimits=ALL
# accounting: slurmdbd + MariaDB, so sacct (and submitit) work
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# scheduling: start eligible jobs within ~2 s
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
$gres_types
# trust the CPU/memory below even though the machine has less
SlurmdParameters=config_overrides
${ns_lines}NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB$node_gres State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE DefaultTime=01:00:00 State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=2-00:00:00 DefaultTime=01:00:00 State=UP$multi_part"

  put_file "$ETC/gres.conf" 644 "$gres_conf"

  # slurmdbd refuses a config that is not mode 600 and owned by SlurmUser
  put_file "$ETC/slurmdbd.conf" 600 "# generated by hpc-ft scripts/local-slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME"

  printf 'export SLURM_CONF=%s\n' "$CONF" >"$ROOT/env.sh"
  echo "$NODES" >"$NODES_FILE"
}

# link_etc: let clients that do not set SLURM_CONF (sbatch/sacct called by tests
# and submitit from any shell) find this cluster through /etc/slurm
link_etc() {
  if [ "$LINK_ETC" = 1 ]; then
    mkdir -p /etc/slurm
    local f
    for f in slurm.conf gres.conf; do
      if [ -L "/etc/slurm/$f" ] || [ ! -e "/etc/slurm/$f" ]; then
        ln -sfn "$ETC/$f" "/etc/slurm/$f"
      else
        log "note: /etc/slurm/$f is a regular file, left alone; clients need SLURM_CONF=$CONF"
      fi
    done
  fi
}

# ------------------------------------------------------------- namespaces ---
# Multi-node: a bridge with $SUBNET.1 (slurmctld's address for the nodes), and per node a network
# namespace joined to it by a veth pair (eth0 inside, $SUBNET.1<i>). No route leads anywhere else.

our_namespaces() {  # every namespace this cluster made, whatever the node count of its start
  local f
  for f in /run/netns/hpcft$CTLD_PORT-node*; do [ -e "$f" ] && echo "${f##*/}"; done
}

# write_ns_etc <ns>: files bind-mounted over /etc for the node's slurmd (where `ip netns exec` looks too)
write_ns_etc() {
  local ns=$1 n hosts="127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
$SUBNET.1 hpcft-slurmctld"
  for n in "${NS_NODES[@]}"; do hosts+="
$(node_ip "$n") $n"; done
  mkdir -p "/etc/netns/$ns/slurm" || die "cannot create /etc/netns/$ns"
  printf '%s\n' "$hosts" >"/etc/netns/$ns/hosts"
  # jobs on the node find this cluster's slurm.conf even without SLURM_CONF in their environment
  ln -sfn "$CONF" "/etc/netns/$ns/slurm/slurm.conf"
  ln -sfn "$ETC/gres.conf" "/etc/netns/$ns/slurm/gres.conf"
  [ -d /etc/slurm ] || mkdir -p /etc/slurm   # the mount point of the slurm/ bind
}

net_up() {
  [ ${#NS_NODES[@]} -gt 0 ] || return 0
  command -v ip >/dev/null || die "start --nodes needs iproute2 (apt-get install iproute2)"
  local other
  other=$(ip -4 -o addr show | awk -v s="$SUBNET." -v br="$BRIDGE" 'index($4, s) == 1 && $2 != br { print $2 }')
  [ -z "$other" ] || die "subnet $SUBNET.0/24 is already used by interface $other; set HPC_FT_SLURM_SUBNET to a free 10.x.y"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge || die "cannot create bridge $BRIDGE (needs root and CAP_NET_ADMIN)"
  fi
  ip addr replace "$SUBNET.1/24" dev "$BRIDGE" && ip link set "$BRIDGE" up || die "cannot configure bridge $BRIDGE"
  local n ns veth
  for n in "${NS_NODES[@]}"; do
    ns=$(ns_name "$n") veth=$(veth_name "$n")
    [ -e "/run/netns/$ns" ] || ip netns add "$ns" || die "cannot create network namespace $ns"
    if ! ip link show "$veth" >/dev/null 2>&1; then
      ip -n "$ns" link del eth0 >/dev/null 2>&1
      ip link add "$veth" type veth peer name eth0 netns "$ns" || die "cannot create veth pair $veth/$ns:eth0"
    fi
    ip link set "$veth" master "$BRIDGE" && ip link set "$veth" up &&
      ip -n "$ns" addr replace "$(node_ip "$n")/24" dev eth0 && ip -n "$ns" link set eth0 up &&
      ip -n "$ns" link set lo up || die "cannot configure the network of $ns"
    write_ns_etc "$ns"
  done
}

# net_down [keep-ns...]: remove our namespaces (but those named), their links and /etc/netns files;
# with nothing kept, the bridge too. Processes still inside a namespace (ours: slurmd, job steps)
# are killed by PID first.
net_down() {
  local ns keep p
  for ns in $(our_namespaces); do
    for keep in "$@"; do [ "$ns" = "$keep" ] && continue 2; done
    for p in $(ip netns pids "$ns" 2>/dev/null); do
      log "killing pid $p ($(cat "/proc/$p/comm" 2>/dev/null)) left in namespace $ns"
      kill -KILL "$p" 2>/dev/null
    done
    ip netns del "$ns" 2>/dev/null || log "warning: could not delete network namespace $ns"
    rm -rf "/etc/netns/$ns"
    log "removed namespace $ns"
  done
  # host ends of veth pairs die with their namespace; remove any left over, then the bridge
  local link
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | sed 's/@.*//' | grep -x "hpcft${CTLD_PORT}v[0-9]*"); do
    ns=$(ns_name "node${link##*v}")
    for keep in "$@"; do [ "$ns" = "$keep" ] && continue 2; done
    ip link del "$link" 2>/dev/null
  done
  if [ $# = 0 ] && ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE" && log "removed bridge $BRIDGE"
  fi
  rmdir /etc/netns 2>/dev/null || true   # only when no namespace of anyone has files left there
}

# ------------------------------------------------------------------ daemons ---
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  munge_ok && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 ||
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  # a stale socket/pid from a killed munged makes the new one refuse to start
  if [ -e /run/munge/munged.pid ] && ! alive /run/munge/munged.pid munged; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  fi
  spawn "$LOG/munged.stdout" runuser -u munge -- /usr/sbin/munged
  wait_until "$WAIT_S" munge_ok || fail munged "munged did not come up (see also /var/log/munge/munged.log)"
  cp -f /run/munge/munged.pid "$RUN/munged.pid" 2>/dev/null # ours: stop may stop it
  log "munged started (pid $(pid_of /run/munge/munged.pid))"
}

sql() { mariadb --no-defaults -S "$DB_SOCK" -uroot -N -B -e "$1"; }

start_mariadb() {
  if ! alive "$RUN/mariadbd.pid" mariadbd; then
    if port_busy "$DB_PORT"; then
      die "port $DB_PORT is taken by another process; set HPC_FT_SLURM_DB_PORT or stop it"
    fi
    if [ ! -d "$ROOT/mysql/mysql" ]; then
      log "initialising MariaDB data dir $ROOT/mysql"
      rm -rf "$ROOT/mysql"
      mkdir -p "$ROOT/mysql"
      mariadb-install-db --no-defaults --datadir="$ROOT/mysql" --user=root --skip-test-db \
        >"$LOG/mariadb-install.log" 2>&1 || fail mariadb-install "mariadb-install-db failed"
    fi
    rm -f "$DB_SOCK"
    spawn --bg "$LOG/mariadb.stdout" setsid /usr/sbin/mariadbd --no-defaults --datadir="$ROOT/mysql" \
      --user=root --socket="$DB_SOCK" --pid-file="$RUN/mariadbd.pid" \
      --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
      --log-error="$LOG/mariadb.err" --innodb-buffer-pool-size=128M \
      --innodb-log-file-size=64M --innodb-lock-wait-timeout=900
    wait_until "$WAIT_S" sql 'SELECT 1' || fail mariadb "MariaDB did not come up"
    log "mariadbd started (pid $(pid_of "$RUN/mariadbd.pid"))"
  fi
  sql "CREATE DATABASE IF NOT EXISTS $DB_NAME;
       CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
       CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
       GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
       GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';" 2>"$LOG/mariadb-grant.err" ||
    fail mariadb-grant "could not create the accounting database/user"
}

start_slurmdbd() {
  alive "$RUN/slurmdbd.pid" slurmdbd && return 0
  port_busy "$DBD_PORT" && die "port $DBD_PORT (slurmdbd) is taken by another process (another Slurm running?)"
  spawn "$LOG/slurmdbd.stdout" /usr/sbin/slurmdbd # daemonizes; reads dirname($SLURM_CONF)/slurmdbd.conf
  wait_until "$WAIT_S" timeout 10 sacctmgr -n -P show cluster || fail slurmdbd "slurmdbd did not come up"
  log "slurmdbd started (pid $(pid_of "$RUN/slurmdbd.pid"))"
}

start_slurmctld() {
  alive "$RUN/slurmctld.pid" slurmctld && return 0
  port_busy "$CTLD_PORT" && die "port $CTLD_PORT (slurmctld) is taken by another process (another Slurm running?)"
  # -i: ignore unreadable/incompatible state files rather than refusing to start
  spawn "$LOG/slurmctld.stdout" /usr/sbin/slurmctld -i
  wait_until "$WAIT_S" bash -c 'timeout 10 scontrol ping | grep -q "is UP"' ||
    fail slurmctld "slurmctld did not come up"
  log "slurmctld started (pid $(pid_of "$RUN/slurmctld.pid"))"
}

# slurmd_pidfile <node>: where that node's slurmd writes its pid (SlurmdPidFile, %n per node when multi-node)
slurmd_pidfile() {
  if [ ${#NS_NODES[@]} -gt 0 ]; then echo "$RUN/slurmd-$1.pid"; else echo "$RUN/slurmd.pid"; fi
}
slurmd_logname() { if [ ${#NS_NODES[@]} -gt 0 ]; then echo "slurmd-$1"; else echo slurmd; fi; }

start_slurmd() {
  local pidf
  pidf=$(slurmd_pidfile "$NODE")
  if ! alive "$pidf" slurmd; then
    port_busy "$SLURMD_PORT" && die "port $SLURMD_PORT (slurmd) is taken by another process (another Slurm running?)"
    # the node name is not the hostname, hence -N
    spawn "$LOG/slurmd.stdout" /usr/sbin/slurmd -N "$NODE"
    wait_until "$WAIT_S" alive "$pidf" slurmd || fail "$(slurmd_logname "$NODE")" "slurmd did not come up"
    log "slurmd started (pid $(pid_of "$pidf"))"
  fi
  # multi-node: $RUN/slurmd.pid keeps naming localhost's slurmd, as with one node
  [ "$pidf" = "$RUN/slurmd.pid" ] || ln -sfn "slurmd-$NODE.pid" "$RUN/slurmd.pid"
  local n ns
  for n in "${NS_NODES[@]}"; do
    pidf=$(slurmd_pidfile "$n") ns=$(ns_name "$n")
    alive "$pidf" slurmd && continue
    # its own network namespace, UTS namespace (the node's name as hostname) and mount namespace
    # (its /etc/hosts and /etc/slurm bound over the host's, as `ip netns exec` would; /sys stays the
    # host's, with the cgroup mounts slurmd needs); everything the node runs inherits all three
    # shellcheck disable=SC2016
    spawn "$LOG/slurmd-$n.stdout" nsenter --net="/run/netns/$ns" -- unshare --uts --mount --propagation slave -- \
      /bin/sh -c 'mount --bind "/etc/netns/$2/hosts" /etc/hosts && mount --bind "/etc/netns/$2/slurm" /etc/slurm &&
        hostname "$1" && exec /usr/sbin/slurmd -N "$1"' sh "$n" "$ns"
    wait_until "$WAIT_S" alive "$pidf" slurmd || fail "slurmd-$n" "slurmd of $n did not come up"
    log "slurmd of $n started (pid $(pid_of "$pidf"), namespace $ns, address $(node_ip "$n"))"
  done
}

# stop_all_slurmd: every slurmd of this cluster, whatever the node count it was started with
stop_all_slurmd() {
  local f
  for f in "$RUN"/slurmd-*.pid "$RUN/slurmd.pid"; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    stop_pid "$f" slurmd
  done
}

all_nodes() { echo "$NODE" "${NS_NODES[@]}"; }
node_state() { timeout 10 sinfo -h -n "$1" -o %T 2>/dev/null | head -n1; }

wait_node_ready() {
  local deadline=$(($(date +%s) + WAIT_S)) st="" node
  local -A resumed=()
  for node in $(all_nodes); do
    while :; do
      st=$(node_state "$node")
      case "$st" in
        idle | mixed | allocated | completing) break ;;
        *drain* | *down* | *inval* | *fail*)
          if [ -z "${resumed[$node]:-}" ]; then
            # a DRAIN/DOWN reason survives restarts in the saved state
            log "node $node state '$st' (reason: $(scontrol show node "$node" 2>/dev/null | sed -n 's/^ *Reason=//p')); resuming it"
            scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
            resumed[$node]=1
          fi
          ;;
      esac
      if [ "$(date +%s)" -ge "$deadline" ]; then
        scontrol show node "$node" >&2 2>/dev/null
        show_log slurmctld
        fail "$(slurmd_logname "$node")" "node $node not usable after ${WAIT_S}s (state '$st')"
      fi
      sleep 0.3
    done
  done
}

sacct_ok() { timeout 15 sacct -n -X -S now-1hours -o JobID >/dev/null 2>&1; }

# preflight_ports: fail early (before touching anything running) when a port we
# need is held by something other than our own daemon, e.g. a second cluster
# started with another HPC_FT_SLURM_ROOT
preflight_ports() {
  local spec name port
  for spec in mariadbd:$DB_PORT slurmdbd:$DBD_PORT slurmctld:$CTLD_PORT slurmd:$SLURMD_PORT; do
    name=${spec%%:*} port=${spec#*:}
    if ! alive "$RUN/$name.pid" "$name" && port_busy "$port"; then
      die "port $port (for $name) is already in use by another process - another Slurm/MariaDB running (other HPC_FT_SLURM_ROOT?). Stop it first."
    fi
  done
}

# -------------------------------------------------------------- subcommands ---
cmd_start() {
  need_root
  local want=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) [ $# -ge 2 ] || die "start: --nodes needs a number"; want=$2; shift 2 ;;
      --nodes=*) want=${1#--nodes=}; shift ;;
      *) die "start: unknown option '$1' (usage: start [--nodes N])" ;;
    esac
  done
  check_knobs
  resolve_nodes "$want"
  mkdir -p "$LOG" || die "cannot create $ROOT"
  install_packages
  write_configs
  if [ $CHANGED = 1 ]; then
    # new or changed config: running Slurm daemons must re-read it
    if alive "$RUN/slurmd.pid" slurmd || [ -n "$(ls "$RUN"/slurmd-*.pid 2>/dev/null)" ]; then
      log "config changed: restarting slurmd"
      stop_all_slurmd
    fi
    local d
    for d in slurmctld slurmdbd; do
      if alive "$RUN/$d.pid" "$d"; then
        log "config changed: restarting $d"
        stop_pid "$RUN/$d.pid" "$d"
      fi
    done
  fi
  # namespaces of nodes that this start does not have (a smaller --nodes) go
  local keep=() n
  for n in "${NS_NODES[@]}"; do keep+=("$(ns_name "$n")"); done
  net_down "${keep[@]}"
  preflight_ports
  net_up
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurmctld
  start_slurmd
  wait_node_ready
  # the cluster registers itself in slurmdbd when slurmctld first connects
  wait_until "$WAIT_S" sacct_ok || fail slurmdbd "sacct does not work"
  link_etc
  log "cluster up: $(timeout 10 sinfo -h -N -o '%N %P %T cpus=%c mem=%mMB gres=%G' | tr '\n' ';')"
  log "use: export SLURM_CONF=$CONF   (or: source $ROOT/env.sh; /etc/slurm/slurm.conf links to it)"
  echo "export SLURM_CONF=$CONF"
}

# our_stepds: pids of slurmstepd processes started by our slurmd
our_stepds() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qx "SLURM_CONF=$CONF" && echo "${p##*/}"
  done
}

cmd_stop() {
  need_root
  local purge=0 a
  for a in "$@"; do
    case "$a" in
      --purge) purge=1 ;;
      *) die "stop: unknown option '$a'" ;;
    esac
  done
  if [ -f "$CONF" ] && alive "$RUN/slurmctld.pid" slurmctld; then
    local ids
    ids=$(timeout 15 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${ids// /}" ]; then
      log "cancelling jobs: $ids"
      # shellcheck disable=SC2086
      timeout 15 scancel $ids 2>/dev/null || true
      # shellcheck disable=SC2016
      wait_until 30 bash -c '[ -z "$(timeout 5 squeue -h 2>/dev/null)" ]' ||
        log "warning: jobs still listed after 30 s: $(timeout 5 squeue -h -o '%A %T' | tr '\n' ' ')"
    fi
  fi
  # job step daemons should be gone once jobs are cancelled; wait, then end any leftover by PID
  if [ -n "$(our_stepds)" ]; then
    local i
    for i in $(seq 1 100); do
      [ -z "$(our_stepds)" ] && break
      sleep 0.2
    done
    local p
    for p in $(our_stepds); do
      log "killing leftover slurmstepd pid $p"
      kill -KILL "$p" 2>/dev/null || true
    done
  fi
  stop_all_slurmd
  stop_pid "$RUN/slurmctld.pid" slurmctld
  stop_pid "$RUN/slurmdbd.pid" slurmdbd
  stop_pid "$RUN/mariadbd.pid" mariadbd
  if [ -s "$RUN/munged.pid" ]; then # only a munged this script started
    stop_pid "$RUN/munged.pid" munged
  fi
  net_down
  if [ $purge = 1 ]; then
    local f
    for f in slurm.conf gres.conf; do
      if [ -L "/etc/slurm/$f" ] && [ "$(readlink "/etc/slurm/$f")" = "$ETC/$f" ]; then
        rm -f "/etc/slurm/$f"
      fi
    done
    rm -rf "$ROOT"
    log "purged $ROOT"
  fi
  log "stopped"
}

cmd_status() {
  if [ ! -f "$CONF" ]; then
    echo "local slurm: not set up ($CONF missing)"
    return 1
  fi
  resolve_nodes ""
  local d down=""
  for d in slurmctld slurmdbd mariadbd; do
    alive "$RUN/$d.pid" "$d" || down+=" $d"
  done
  for d in $(all_nodes); do
    alive "$(slurmd_pidfile "$d")" slurmd || down+=" slurmd($d)"
  done
  munge_ok || down+=" munged"
  if [ -n "$down" ]; then
    echo "local slurm: DOWN (not running:$down); root $ROOT"
    return 1
  fi
  local st states="" bad=0 line acct=no
  for d in $(all_nodes); do
    st=$(node_state "$d")
    states+="node $d $st; "
    case "$st" in
      idle | mixed | allocated | completing) ;;
      *) bad=1 ;;
    esac
  done
  line=$(timeout 10 sinfo -h -o '%P(%a,maxtime=%l)' 2>/dev/null | tr '\n' ' ')
  sacct_ok && acct=yes
  echo "local slurm: ${states}partitions: ${line% }; sacct works: $acct; SLURM_CONF=$CONF"
  [ $bad = 0 ] && [ $acct = yes ]
}

cmd_logs() {
  local n=${1:-30} f
  for f in "$LOG"/*.log "$LOG"/*.err "$LOG"/*.stdout; do
    [ -s "$f" ] || continue
    echo "===== $f ====="
    tail -n "$n" "$f"
  done
}

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  restart) shift; cmd_stop && cmd_start "$@" ;;
  status) shift; cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  logs) shift; cmd_logs "$@" ;;
  -h | --help | help) usage ;;
  *) usage; exit 2 ;;
esac
