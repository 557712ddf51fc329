#!/usr/bin/env bash
# Stop what start.sh started, strictly by the pid files it keeps in $LOCAL_SLURM_DIR/run
# (munged only if start.sh launched it). Jobs still in this cluster are cancelled first so
# their worker processes end too. /etc/slurm/slurm.conf and the state directory are kept.
set -uo pipefail
BASE=${LOCAL_SLURM_DIR:-${TMPDIR:-/tmp}/oamlm-local-slurm}
RUN=$BASE/run
log() { printf '[local-slurm stop %(%T)T] %s\n' -1 "$*"; }
alive() { local p=$1 name=$2; [ -n "$p" ] && [ -r "/proc/$p/comm" ] && [ "$(cat "/proc/$p/comm")" = "$name" ]; }
pid_of_file() { [ -s "$1" ] && tr -dc '0-9' < "$1" || true; }

if alive "$(pid_of_file "$RUN/slurmctld.pid")" slurmctld; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// }" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086  # one argument per job id
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi

stop_one() {   # pidfile program
  local f=$1 name=$2 p
  p=$(pid_of_file "$f")
  if alive "$p" "$name"; then
    log "stopping $name (pid $p)"; kill -TERM "$p"
    for _ in $(seq 100); do alive "$p" "$name" || break; sleep 0.1; done
    if alive "$p" "$name"; then log "$name did not exit, sending SIGKILL"; kill -KILL "$p"; fi
  elif [ -n "$p" ]; then
    log "$name (pid $p) is not running"
  fi
  rm -f "$f"
}
stop_one "$RUN/slurmd.pid" slurmd
stop_one "$RUN/slurmctld.pid" slurmctld
stop_one "$RUN/munged.pid" munged
exit 0
