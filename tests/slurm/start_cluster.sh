#!/usr/bin/env bash
# Start a real one-node SLURM cluster on 127.0.0.1, everything inside one folder:
#
#   tests/slurm/start_cluster.sh DIR      # then: source DIR/env.sh; sbatch/sacct/snakemake --executor slurm ...
#   tests/slurm/stop_cluster.sh DIR       # stops it again (also what this script runs when a step fails)
#
# Debian's packages: apt-get install slurm-wlm slurmdbd munge mariadb-server (run as root: slurmd starts each
# job as its user). Daemons: munged (authentication), mariadbd + slurmdbd (the accounting database that `sacct`
# reads; a jobcomp/filetxt log is read only by `sacct -c`, which Snakemake's executor never calls), slurmctld
# and slurmd. They listen on free ports of 127.0.0.1 and keep their sockets, pid files, logs and state under DIR,
# so nothing on the machine is read or changed (no /etc/slurm, no /run/munge, no system MariaDB). DIR/env.sh
# points the client commands at it.
#
# The cluster: name pbtest, one node (pbnode) with this machine's CPUs, one partition `pbtest` (default,
# no time limit), account `pbtest` for root. Memory is neither enforced nor a consumable resource here (no
# cgroup plugin: CR_CPU, proctrack/linuxproc), and the node declares 64 GB whatever the machine has, so a
# rule's real mem_mb request (8 GB for `prepare`) is accepted on a small CI machine.
set -euo pipefail

DIR=${1:?usage: start_cluster.sh DIR}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
CLUSTER=pbtest
PARTITION=pbtest
ACCOUNT=pbtest
NODE=pbnode
HOST=$(hostname -s)
CPUS=$(nproc)
WAIT=${SLURM_TEST_START_TIMEOUT:-120}  # seconds each daemon may take to answer (the machine may be loaded)

fail() { echo "start_cluster: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "must run as root (slurmd starts each job as its user)"
for bin in munged munge slurmctld slurmd slurmdbd sbatch sacct sacctmgr mariadbd mariadb-install-db mariadb; do
    command -v "$bin" >/dev/null || fail "$bin not found: apt-get install slurm-wlm slurmdbd munge mariadb-server"
done
[ ! -e "$DIR/etc/slurm.conf" ] || fail "$DIR already holds a cluster: stop it ($HERE/stop_cluster.sh $DIR) and use a new folder"
# Anything that fails from here on stops what was started so far.
trap 'echo "start_cluster: failed; logs in $DIR/log" >&2; "$HERE/stop_cluster.sh" "$DIR" >&2 || true' EXIT

mkdir -p "$DIR"/{etc,munge,mysql,log,run,bin,spool/ctld,spool/d}
chmod 700 "$DIR/munge"

# Free TCP ports on 127.0.0.1: slurmctld, slurmd, slurmdbd, MariaDB.
read -r CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT < <("$PYTHON" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

wait_for() {  # wait_for WHAT COMMAND...: retry COMMAND until it succeeds or $WAIT seconds have passed
    local what=$1; shift
    for _ in $(seq "$WAIT"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    fail "$what did not come up within ${WAIT}s (see $DIR/log)"
}

# --- munge: its own key and socket --------------------------------------------------------------------------
SOCKET="$DIR/munge/munge.socket"
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/munge.key"
munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
       --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
wait_for munged sh -c "munge -S '$SOCKET' -n | unmunge -S '$SOCKET'"

# --- MariaDB for slurmdbd: its own data folder, socket and port --------------------------------------------
mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root --auth-root-authentication-method=socket \
                   --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1
nohup mariadbd --no-defaults --datadir="$DIR/mysql" --user=root --socket="$DIR/run/mariadb.sock" \
       --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadb.pid" \
       --log-error="$DIR/log/mariadb.log" --skip-log-bin --innodb-buffer-pool-size=64M \
       --innodb-lock-wait-timeout=900 --performance-schema=OFF > /dev/null 2>&1 &
echo $! > "$DIR/run/mariadbd.pid"  # mariadbd runs in the foreground: its own pid file appears only later
wait_for MariaDB mariadb --no-defaults --socket="$DIR/run/mariadb.sock" -u root -e "SELECT 1"
mariadb --no-defaults --socket="$DIR/run/mariadb.sock" -u root -e "
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

# --- configuration -----------------------------------------------------------------------------------------
cat > "$DIR/etc/slurm.conf" <<EOF
# One-node test cluster written by tests/slurm/start_cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
PlugStackConfig=$DIR/etc/plugstack.conf
# No cgroups: processes are tracked by their parent ids; nothing is confined (fine for one trusted user).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
MpiDefault=none
SwitchType=switch/none
# Accounting in slurmdbd (reached through the same munged: AccountingStoragePass), so that sacct answers (and keeps each job's --comment: Snakemake's rule and wildcards).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCKET
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# A job past its time limit gets SIGTERM, then SIGKILL 5 s later (state TIMEOUT).
KillWait=5
OverTimeLimit=0
MinJobAge=300
ReturnToService=2
# The node declares 64 GB whatever the machine has (memory is not a consumable resource here).
SlurmdParameters=config_overrides
NodeName=$NODE NodeHostname=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=64000 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
: > "$DIR/etc/plugstack.conf"
cat > "$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCKET
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
chmod 600 "$DIR/etc/slurmdbd.conf"

# The client commands (and slurmdbd, which reads slurmdbd.conf beside it) find the cluster through SLURM_CONF.
# Snakemake's slurm-jobstep plugin deletes every SLURM_* variable except the job's ids before it calls srun
# inside a job; on a real cluster srun then finds /etc/slurm/slurm.conf, here it finds this wrapper first.
cat > "$DIR/bin/srun" <<EOF
#!/bin/sh
SLURM_CONF=$DIR/etc/slurm.conf exec $(command -v srun) "\$@"
EOF
chmod 755 "$DIR/bin/srun"
cat > "$DIR/env.sh" <<EOF
export SLURM_CONF=$DIR/etc/slurm.conf
export PATH=$DIR/bin:\$PATH
EOF
export SLURM_CONF="$DIR/etc/slurm.conf"

# --- slurmdbd, the cluster's account, slurmctld, slurmd -------------------------------------------------------
slurmdbd
wait_for slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster "$CLUSTER" > /dev/null
sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="suite tests" organization=tests > /dev/null
sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" > /dev/null
slurmctld
wait_for slurmctld scontrol ping
slurmd -N "$NODE"
node_idle() { [ "$(sinfo -h -n "$NODE" -o %T)" = idle ]; }
wait_for "node $NODE" node_idle

trap - EXIT
echo "cluster $CLUSTER up: partition $PARTITION, account $ACCOUNT, $CPUS CPUs; source $DIR/env.sh"
