#!/bin/bash
# Stop the one-node development cluster of cluster/slurm-dev/start.sh: cancel every job, then stop
# slurmd, slurmctld and munged (by the pids in their pid files). Idempotent: nothing running, or
# nothing installed, is fine. Leaves the packages and /etc/slurm/slurm.conf in place.
set -uo pipefail

DIR=${S2V_SLURM_DIR:-/var/lib/s2v-slurm-dev}

say() { echo "slurm-dev: $*"; }

[ "$(id -u)" -eq 0 ] || { echo "slurm-dev: error: must run as root" >&2; exit 1; }

pid_of() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ] && echo "$pid"
}

# stop PIDFILE NAME: SIGTERM, then SIGKILL after 20 s; wait until the process is gone.
stop() {
    local pid
    pid=$(pid_of "$1" "$2") || return 0
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
    for _ in $(seq 25); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    echo "slurm-dev: error: $2 (pid $pid) did not stop" >&2
    return 1
}

# The jobs first, while slurmctld and slurmd can still end them (their processes with them).
if pid_of "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 100); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

rc=0
stop "$DIR/run/slurmd.pid" slurmd || rc=1
stop "$DIR/run/slurmctld.pid" slurmctld || rc=1
stop /run/munge/munged.pid munged || rc=1
# Job steps end with their jobs; say so if one outlived the daemons.
left=$(ps -eo pid=,comm= | awk '$2 == "slurmstepd" {print $1}' | tr '\n' ' ')
if [ -n "${left// /}" ]; then
    echo "slurm-dev: error: slurmstepd still running (pids $left)" >&2
    rc=1
fi
[ "$rc" -eq 0 ] && say "stopped"
exit "$rc"
