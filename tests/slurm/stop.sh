#!/usr/bin/env bash
# Stop the cluster that start.sh started under STATE_DIR: its jobs, then its daemons by their pid files,
# then the /etc/slurm/slurm.conf link if it still points at this STATE_DIR. Packages stay installed.
set -euo pipefail

STATE_DIR=$(realpath -m "${1:?usage: stop.sh STATE_DIR}")
RUN=$STATE_DIR/run
export SLURM_CONF=$STATE_DIR/etc/slurm.conf

# A pid file counts only while its process still has the daemon's name (pids are reused).
pid_of() {
  local pid
  pid=$(cat "$RUN/$1.pid" 2>/dev/null) && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}
stop() {
  local pid
  pid=$(pid_of "$1") || return 0
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  rm -f "$RUN/$1.pid" # the daemons remove their own on a clean exit
}

# Cancelled first, so that slurmd reaps its job steps instead of leaving them behind.
if pid_of slurmctld >/dev/null; then
  scancel --full --user=root 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(squeue -h -t running,completing 2>/dev/null)" ] && break; sleep 0.2; done
fi
stop slurmd
stop slurmctld
stop munged
if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$SLURM_CONF" ]; then
  rm /etc/slurm/slurm.conf
fi
