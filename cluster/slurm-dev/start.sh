#!/bin/bash
# A one-node SLURM cluster on this machine, for development and the test suite (not for a site:
# a site already runs SLURM). Installs Debian's munge, slurmctld and slurmd when missing, writes
# /etc/slurm/slurm.conf (this host on loopback, all its CPUs, one partition "cpu", no cgroups),
# starts munged, slurmctld and slurmd without systemd, and waits until sinfo shows the node ready.
#
#   sudo cluster/slurm-dev/start.sh     # idempotent: a running cluster is left as it is
#   sinfo; squeue                       # the partition, the jobs
#   sudo cluster/slurm-dev/stop.sh      # cancels every job, stops the daemons
#
# Environment: S2V_SLURM_DIR (state, spool, logs, pid files; default /var/lib/s2v-slurm-dev),
# S2V_SLURM_PARTITION (default cpu, as in cluster/slurm-cpu.yaml), S2V_SLURM_WAIT (seconds to
# wait for the node, default 180).
set -euo pipefail

DIR=${S2V_SLURM_DIR:-/var/lib/s2v-slurm-dev}
PARTITION=${S2V_SLURM_PARTITION:-cpu}
WAIT=${S2V_SLURM_WAIT:-180}
CONF=/etc/slurm/slurm.conf
MARK="# Written by s2v-batch cluster/slurm-dev/start.sh: a one-node development cluster."
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { echo "slurm-dev: $*"; }
die() { echo "slurm-dev: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts system daemons)"

# -- packages ------------------------------------------------------------------------------------
missing=()
for pkg in munge slurm-client slurmctld slurmd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]} (apt-get)"
    # Without systemd, the packages' scripts must not try to start the daemons themselves:
    # a policy-rc.d that says "no" (101) for the duration of the install, unless one exists.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    ok=1
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >"${TMPDIR:-/tmp}/s2v-slurm-dev-apt.log" 2>&1 || ok=0
    [ "$own_policy" -eq 1 ] && rm -f "$policy"
    [ "$ok" -eq 1 ] || { tail -20 "${TMPDIR:-/tmp}/s2v-slurm-dev-apt.log" >&2; die "apt-get install failed"; }
fi

# -- helpers -------------------------------------------------------------------------------------
# pid_of PIDFILE NAME: the pid in PIDFILE when that process is alive and is NAME.
pid_of() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ] && echo "$pid"
}

# -- configuration -------------------------------------------------------------------------------
NODE=$(hostname -s)
# The daemons bind to the address this host's name resolves to: it must be loopback.
if ! getent ahostsv4 "$NODE" | awk '{print $1}' | grep -qx 127.0.0.1; then
    die "this host's name ($NODE) does not resolve to 127.0.0.1; add '127.0.0.1 $NODE' to /etc/hosts"
fi
# The hardware as slurmd sees it (`nproc` would follow the caller's OMP_NUM_THREADS instead).
# Leave 5% of the memory out: slurmd marks a node invalid when it has less than configured.
HW=$(/usr/sbin/slurmd -C | head -1)
field() { echo "$HW" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }
CPUS=$(field CPUs)
MEM=$(( $(field RealMemory) * 95 / 100 ))
TOPOLOGY="CPUs=$CPUS Boards=$(field Boards) SocketsPerBoard=$(field SocketsPerBoard) CoresPerSocket=$(field CoresPerSocket) ThreadsPerCore=$(field ThreadsPerCore)"
mkdir -p /etc/slurm "$DIR"/{ctld,spool,log,run}
chown slurm:slurm "$DIR"/ctld "$DIR"/log "$DIR"/run
if [ -e "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script; not touching a real SLURM setup"
fi
new=$(mktemp)
trap 'rm -f "$new"' EXIT
cat >"$new" <<EOF
$MARK
# Daemons and commands find each other on loopback (this host's name resolves to 127.0.0.1).
ClusterName=s2v-dev
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# Every daemon binds to the address this host's name resolves to (127.0.0.1), not to all of them.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
# No cgroups here: processes are tracked by parent pid, tasks are not bound to cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
# Cores and memory are the consumable resources, as on a shared HPC node.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A node that comes back with a valid configuration is usable again at once.
ReturnToService=2
# scancel: SIGKILL 5 s after SIGTERM (default 30).
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE $TOPOLOGY RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
if ! cmp -s "$new" "$CONF"; then
    if pid_of "$DIR/run/slurmctld.pid" slurmctld >/dev/null || pid_of "$DIR/run/slurmd.pid" slurmd >/dev/null; then
        say "configuration changed: restarting the daemons"
        "$HERE/stop.sh"
    fi
    install -m 644 "$new" "$CONF"
fi

# The daemons start with a clean environment, not the caller's (a test's TMPDIR, thread settings).
CLEAN="env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8"

# -- munge ---------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
if ! pid_of /run/munge/munged.pid munged >/dev/null; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    say "starting munged"
    $CLEAN runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"

# -- slurmctld, slurmd ---------------------------------------------------------------------------
if ! pid_of "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    say "starting slurmctld"
    # -c: a fresh controller state each start (no jobs carried over from an earlier run).
    $CLEAN /usr/sbin/slurmctld -c
fi
if ! pid_of "$DIR/run/slurmd.pid" slurmd >/dev/null; then
    say "starting slurmd"
    $CLEAN /usr/sbin/slurmd
fi

state=""
for _ in $(seq $((WAIT * 2))); do
    state=$(sinfo -h -n "$NODE" -p "$PARTITION" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
        idle | mixed | allocated | completing) break ;;
        down* | drain* | fail*)
            # A node left down by an earlier, unclean stop: it is fine now, bring it back.
            scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
done
case "$state" in
    idle | mixed | allocated | completing) ;;
    *)
        tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
        die "node $NODE is '${state:-unknown}' after ${WAIT} s (logs under $DIR/log)" ;;
esac
say "node $NODE $state: partition $PARTITION, $CPUS CPUs, $MEM MB (sinfo, squeue; stop with $HERE/stop.sh)"
