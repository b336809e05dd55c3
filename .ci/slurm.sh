#!/usr/bin/env bash
# A real single-node SLURM on this machine, for CI and for trying the cluster profile by hand.
#   bash .ci/slurm.sh install   apt packages slurm-wlm + munge (root; skipped when already there)
#   bash .ci/slurm.sh up        writes /etc/slurm/{slurm.conf,gres.conf}, starts munged, slurmctld, slurmd; waits for
#                               the node to be idle. One partition `debug` (the default), no accounting (no slurmdbd:
#                               Snakemake must ask squeue for job states), one fake GPU (gres.conf File=/dev/null).
#   bash .ci/slurm.sh down      stops the three daemons this script started (by the pids it recorded) and takes its
#                               config away again (a config left behind pointing at a stopped controller makes every
#                               `scontrol` wait ~9 s, and Snakemake's SLURM plugin runs one at each start, even locally)
# The config must live at /etc/slurm/slurm.conf: job steps do not see SLURM_CONF.
set -euo pipefail
STATE=/run/cxrbench-slurm
CONF=/etc/slurm

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)  # leave headroom for the head process
  mkdir -p "$CONF" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$STATE"
  for f in slurm.conf gres.conf; do  # a config this script did not write is kept aside and put back by `down`
    if [ -e "$CONF/$f" ] && ! grep -q '^# written by cxrbench' "$CONF/$f" && [ ! -e "$STATE/$f.orig" ]; then
      cp -p "$CONF/$f" "$STATE/$f.orig"
    fi
  done
  cat >"$CONF/slurm.conf" <<EOF
# written by cxrbench .ci/slurm.sh: a single-node test cluster on loopback
ClusterName=cxrbench
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
ReturnToService=2
MinJobAge=600
KillWait=10
SchedulerType=sched/backfill
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  { echo "# written by cxrbench .ci/slurm.sh"; echo "NodeName=$host Name=gpu File=/dev/null"; } >"$CONF/gres.conf"
}

up() {
  install
  write_conf
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if ! pgrep -u munge -x munged >/dev/null; then
    su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid"
    cp /run/munge/munged.pid "$STATE/munged.pid"
  fi
  [ -s "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null || slurmctld
  [ -s "$STATE/slurmd.pid" ] && kill -0 "$(cat "$STATE/slurmd.pid")" 2>/dev/null || slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      sinfo
      return
    fi
    sleep 1
  done
  echo "slurm.sh: the node did not come up; logs in /var/log/slurm" >&2
  tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
}

stop_pid() {
  local file=$1
  [ -s "$file" ] || return 0
  local pid
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  rm -f "$file"
}

down() {
  scancel --user="$(id -un)" 2>/dev/null || true
  stop_pid "$STATE/slurmd.pid"
  stop_pid "$STATE/slurmctld.pid"
  stop_pid "$STATE/munged.pid"
  for f in slurm.conf gres.conf; do
    if [ -e "$STATE/$f.orig" ]; then
      mv -f "$STATE/$f.orig" "$CONF/$f"
    elif [ -e "$CONF/$f" ] && grep -q '^# written by cxrbench' "$CONF/$f"; then
      rm -f "$CONF/$f"
    fi
  done
}

"${1:?usage: slurm.sh install|up|down}"
