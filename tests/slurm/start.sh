#!/usr/bin/env bash
# A one-node Slurm for the integration tests: munge, slurmctld and slurmd from Debian's packages, started
# as root without systemd, the node advertising fake GPUs so that GPU rules are scheduled as on a cluster.
# Config, state, logs and pid files live under STATE_DIR; a second call with the same STATE_DIR only
# restarts what is not running (or everything, if the config changed).
#
#   tests/slurm/start.sh STATE_DIR && export SLURM_CONF=STATE_DIR/etc/slurm.conf
#   SLURM_PARTITION, SLURM_GPU_TYPE, SLURM_GPUS: the partition and GPUs to offer [gpu, h100, 8]
set -euo pipefail

STATE_DIR=$(realpath -m "${1:?usage: start.sh STATE_DIR}")
PARTITION=${SLURM_PARTITION:-gpu}
GPU_TYPE=${SLURM_GPU_TYPE:-h100}
GPUS=${SLURM_GPUS:-8}
NODE=localhost # fixed, so the config does not depend on the machine's hostname
ETC=$STATE_DIR/etc RUN=$STATE_DIR/run LOG=$STATE_DIR/log
MUNGE_SOCKET=$RUN/munge.socket
export SLURM_CONF=$ETC/slurm.conf

die() {
  echo "start.sh: $*" >&2
  exit 1
}
# A pid file counts only while its process still has the daemon's name (pids are reused).
pid_of() {
  local pid
  pid=$(cat "$RUN/$1.pid" 2>/dev/null) && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}
running() { pid_of "$1" >/dev/null; }
stop() {
  local pid
  pid=$(pid_of "$1") || return 0
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
}

[ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root and packages come from apt-get)"
# Slurm's ports are fixed: a slurmctld that is not ours (another test cluster, a real one) would take ours.
if ! running slurmctld && (: </dev/tcp/127.0.0.1/6817) 2>/dev/null; then
  die "port 6817 is taken by a slurmctld that is not this STATE_DIR's; stop that cluster first"
fi
# The executor plugin's job step drops SLURM_CONF before its inner srun, which then reads the compiled-in
# /etc/slurm/slurm.conf: that path must be ours, and must not belong to a real cluster.
if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
  die "/etc/slurm/slurm.conf is a real Slurm configuration; not starting a second cluster over it"
fi

installed() { for binary in "$@"; do command -v "$binary" >/dev/null || return 1; done; }
if ! installed slurmctld slurmd sbatch munged; then
  # --no-install-recommends: 8 packages instead of slurm-wlm's 40-odd. Their postinst cannot start
  # services without systemd; the daemons are started below instead.
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

mkdir -p "$ETC" "$RUN" "$LOG" "$STATE_DIR/ctld" "$STATE_DIR/slurmd" "$STATE_DIR/munge" "$STATE_DIR/gpus"
chmod 700 "$STATE_DIR/munge"
[ -s "$STATE_DIR/munge/munge.key" ] || head -c 1024 /dev/urandom >"$STATE_DIR/munge/munge.key"
chmod 400 "$STATE_DIR/munge/munge.key"
# gres.conf wants a character device per GPU; links to /dev/null pass that check and need no mknod.
for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$STATE_DIR/gpus/nvidia$i"; done

# The node as slurmd sees it (CPUs, sockets, cores, threads), with memory kept a little below what it
# detects so that the node is never drained for having less than it advertises.
hardware=$(slurmd -C | head -1)
topology=$(grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' <<<"$hardware" | xargs)
memory=$(($(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$hardware") * 9 / 10))

new_conf=$(
  cat <<EOF
ClusterName=prism-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MailProg=/bin/true
# no cgroups in a CI container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# cons_tres schedules --gpus; memory is a consumable, so jobs without --mem must not take the whole node
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# Jobs keep their time limits on record but may overrun them: the tiny stages' limits fit a quiet 2-core
# machine, and a busy CI machine must not turn into a failed test.
OverTimeLimit=UNLIMITED
# No slurmdbd: Snakemake polls squeue, which must still list finished jobs (at least 3 x its first
# status delay), and the tests read every job back with scontrol after the run; sacct -c reads jobcomp.
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 $topology RealMemory=$memory Gres=gpu:$GPU_TYPE:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
new_gres="AutoDetect=off
NodeName=$NODE Name=gpu Type=$GPU_TYPE File=$STATE_DIR/gpus/nvidia[0-$((GPUS - 1))]"
if [ "$new_conf" != "$(cat "$ETC/slurm.conf" 2>/dev/null)" ] || [ "$new_gres" != "$(cat "$ETC/gres.conf" 2>/dev/null)" ]; then
  stop slurmd
  stop slurmctld
  echo "$new_conf" >"$ETC/slurm.conf"
  echo "$new_gres" >"$ETC/gres.conf"
fi
mkdir -p /etc/slurm
ln -sfn "$ETC/slurm.conf" /etc/slurm/slurm.conf

# Our own munged on our own socket: a distribution munged on /run/munge, if any, is left alone. --force
# lets it serve from under a private (0700) temporary directory, which munged refuses by default.
if ! running munged; then
  munged --force --key-file="$STATE_DIR/munge/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$RUN/munged.pid" \
    --log-file="$LOG/munged.log" --seed-file="$STATE_DIR/munge/seed"
fi
running slurmctld || slurmctld
running slurmd || slurmd -N "$NODE"

# A node restarted after an unclean stop comes back DOWN; resuming it is what an admin would do.
for _ in $(seq 100); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  case $state in
  idle | mixed | allocated) break ;;
  down* | drain*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.2
done
case $state in idle | mixed | allocated) ;; *) die "node $NODE is '$state'; see $LOG/slurmd.log and slurmctld.log" ;; esac

# One GPU job end to end: scheduling, the munge credential and the fake device all work.
visible=$(timeout 60 srun -t 1 --gpus="$GPU_TYPE:1" printenv CUDA_VISIBLE_DEVICES) ||
  die "a one-GPU srun failed; see $LOG/slurmctld.log"
[ "$visible" = 0 ] || die "a one-GPU srun saw CUDA_VISIBLE_DEVICES='$visible'"
echo "Slurm up: partition $PARTITION, node $NODE ($topology, ${memory} MB, gpu:$GPU_TYPE:$GPUS)"
