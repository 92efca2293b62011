"""`python -m sweeper.localslurm up|down|status`: a real single-node SLURM cluster on this
machine, from Debian's packages, with accounting (slurmdbd + MariaDB) so that ``sacct``
and submitit see failed, cancelled and requeued jobs.

For CI and for trying ``launcher=slurm`` without a cluster: needs root (the daemons run
as root), no systemd. ``up --install`` installs the packages with apt-get first. All
state lives in ``.slurm/`` at the repository root; ``/etc/slurm/slurm.conf`` becomes a
link to its config (only if no other config is there) so that sbatch, squeue and
submitit find the cluster without SLURM_CONF.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".slurm"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
PACKAGES = ["slurmctld", "slurmd", "slurmdbd", "slurm-client", "munge", "mariadb-server", "mariadb-client"]
BINARIES = ["slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "munged", "mariadbd", "mariadb"]
CLUSTER = "sr"
DB_SOCKET = Path("/run/mysqld/mysqld.sock")
DB_PIDFILE = Path("/run/mysqld/mariadb-sr.pid")  # mariadbd runs as mysql: it cannot write to .slurm/


class ClusterError(RuntimeError):
    pass


def run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def wait_for(what: str, ok, timeout: float = 60.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.3)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise ClusterError(f"{what} did not come up within {timeout:.0f} s" + (f"; its log ends:\n{tail}" if tail else ""))


def env() -> dict:
    return {**os.environ, "SLURM_CONF": str(STATE / "slurm.conf")}


def slurm_conf(cpus: int, mem_mb: int) -> str:
    s = STATE
    return f"""# Written by `python -m sweeper.localslurm up` (make slurm-up); removed by `down`.
ClusterName={CLUSTER}
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
KillWait=10
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
StateSaveLocation={s}/state
SlurmdSpoolDir={s}/spool
SlurmctldPidFile={s}/slurmctld.pid
SlurmdPidFile={s}/slurmd.pid
SlurmctldLogFile={s}/slurmctld.log
SlurmdLogFile={s}/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def slurmdbd_conf() -> str:
    s = STATE
    return f"""AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile={s}/slurmdbd.pid
LogFile={s}/slurmdbd.log
"""


def machine() -> tuple[int, int]:
    cpus = os.cpu_count() or 1
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return cpus, max(1000, int(mem_kb / 1024 * 0.9))


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().split()[0]), 0)
        return True
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False


def check_prerequisites(install: bool) -> None:
    if os.geteuid() != 0:
        raise ClusterError("the local SLURM cluster needs root (its daemons run as root); run as root or use a real cluster")
    missing = [b for b in BINARIES if not shutil.which(b) and not Path("/usr/sbin", b).exists()]
    if missing and install:
        print(f"installing {' '.join(PACKAGES)} ...", flush=True)
        e = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=e)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], env=e)
        missing = [b for b in BINARIES if not shutil.which(b) and not Path("/usr/sbin", b).exists()]
    if missing:
        raise ClusterError(f"missing {', '.join(missing)}: install with `apt-get install {' '.join(PACKAGES)}` "
                           "or run `python -m sweeper.localslurm up --install`")


def start_munge() -> None:
    if run(["bash", "-c", "munge -n | unmunge"], check=False).returncode == 0:
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--force"])
    wait_for("munged", lambda: run(["bash", "-c", "munge -n | unmunge"], check=False).returncode == 0, 20)


def start_mariadb() -> None:
    ping = lambda: run(["mariadb-admin", "--socket", str(DB_SOCKET), "ping"], check=False).returncode == 0  # noqa: E731
    if not ping():
        DB_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(DB_SOCKET.parent, "mysql", "mysql")
        if not Path("/var/lib/mysql/mysql").is_dir():
            run(["mariadb-install-db", "--user=mysql", "--datadir=/var/lib/mysql"])
        log = open(STATE / "mariadb.log", "a")
        proc = subprocess.Popen(["/usr/sbin/mariadbd", "--user=mysql", "--datadir=/var/lib/mysql",
                                 f"--socket={DB_SOCKET}", f"--pid-file={DB_PIDFILE}", "--bind-address=127.0.0.1",
                                 "--innodb-buffer-pool-size=64M"],
                                stdout=log, stderr=log, start_new_session=True)
        wait_for("MariaDB", lambda: ping() or proc.poll() is not None, 60, STATE / "mariadb.log")
        if proc.poll() is not None:
            raise ClusterError(f"MariaDB exited ({proc.returncode}); see {STATE / 'mariadb.log'}")
    run(["mariadb", "--socket", str(DB_SOCKET), "-e",
         "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';"
         "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"])


def node_state() -> str:
    proc = run(["sinfo", "-h", "-N", "-o", "%T"], check=False, env=env())
    return proc.stdout.strip() if proc.returncode == 0 else ""


def up(install: bool = False) -> None:
    check_prerequisites(install)
    for sub in ("state", "spool"):
        (STATE / sub).mkdir(parents=True, exist_ok=True)
    cpus, mem_mb = machine()
    conf = STATE / "slurm.conf"
    conf.write_text(slurm_conf(cpus, mem_mb))
    dbd = STATE / "slurmdbd.conf"
    dbd.write_text(slurmdbd_conf())
    dbd.chmod(0o600)
    if SYSTEM_CONF.is_symlink() or not SYSTEM_CONF.exists():
        SYSTEM_CONF.unlink(missing_ok=True)
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(conf)
    elif SYSTEM_CONF.resolve() != conf:
        print(f"note: {SYSTEM_CONF} belongs to another cluster; export SLURM_CONF={conf} to use this one")

    start_munge()
    start_mariadb()
    if not pid_alive(STATE / "slurmdbd.pid"):
        run(["slurmdbd"], env=env())
    wait_for("slurmdbd", lambda: port_open(6819), 60, STATE / "slurmdbd.log")
    if CLUSTER not in run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"], env=env()).stdout.split():
        run(["sacctmgr", "-i", "add", "cluster", CLUSTER], env=env())
    if not pid_alive(STATE / "slurmctld.pid"):
        run(["slurmctld"], env=env())
    wait_for("slurmctld", lambda: port_open(6817), 60, STATE / "slurmctld.log")
    if not pid_alive(STATE / "slurmd.pid"):
        run(["slurmd", "-N", "localhost"], env=env())
    wait_for("the node", lambda: node_state() in ("idle", "mixed", "allocated"), 60, STATE / "slurmd.log")
    print(f"SLURM cluster '{CLUSTER}' is up: 1 node, {cpus} CPUs, {mem_mb} MB, partition 'debug', accounting on "
          f"(state in {STATE})")


def down() -> None:
    for name in ("slurmd", "slurmctld", "slurmdbd", "mariadb"):
        pidfile = DB_PIDFILE if name == "mariadb" else STATE / f"{name}.pid"
        if not pid_alive(pidfile):
            continue
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pid_alive(pidfile):
            time.sleep(0.2)
        print(f"stopped {name} ({pid})")
    if SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == (STATE / "slurm.conf").resolve():
        SYSTEM_CONF.unlink()
    # munged is left running: other software on the machine may use it.


def status() -> int:
    state = node_state()
    print(f"node: {state or 'unreachable'}")
    return 0 if state else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweeper.localslurm", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--install", action="store_true", help="apt-get install the packages first if missing")
    args = ap.parse_args(argv)
    try:
        if args.command == "up":
            up(args.install)
        elif args.command == "down":
            down()
        else:
            return status()
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
