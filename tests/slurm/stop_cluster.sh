#!/usr/bin/env bash
# Stop the cluster that tests/slurm/start_cluster.sh started in DIR: cancel its jobs, then end its daemons
# (by the process ids in DIR/run, newest first). Safe to run twice, or after a start that failed half-way; the logs stay in DIR/log.
set -uo pipefail

DIR=${1:?usage: stop_cluster.sh DIR}
[ -d "$DIR/run" ] || exit 0
DIR=$(cd "$DIR" && pwd)
export SLURM_CONF="$DIR/etc/slurm.conf"

alive() {  # alive PIDFILE NAME: the pid in PIDFILE, if that process is still NAME
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 < "$1")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

# Jobs first: slurmstepd (and the job's processes) outlive slurmd otherwise.
if alive "$DIR/run/slurmctld.pid" slurmctld > /dev/null; then
    scancel --quiet --user=root 2>/dev/null
    for _ in $(seq 30); do
        [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
        sleep 1
    done
fi

stop() {  # stop NAME PIDFILE: SIGTERM, then SIGKILL after 30 s
    local pid
    pid=$(alive "$2" "$1") || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 60); do
        [ -d "/proc/$pid" ] || return 0
        sleep 0.5
    done
    echo "stop_cluster: $1 ($pid) ignored SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null
}

stop slurmd "$DIR/run/slurmd.pid"
stop slurmctld "$DIR/run/slurmctld.pid"
stop slurmdbd "$DIR/run/slurmdbd.pid"
stop mariadbd "$DIR/run/mariadbd.pid"
stop munged "$DIR/run/munged.pid"
# What is left (state, logs, database) stays in DIR for inspection.
exit 0
