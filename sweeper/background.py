"""Submit and walk away on one machine: the sweep's driver goes on in the background.

``launcher=local_parallel hydra.launcher.detach=true`` validates the grid here (so a bad value
is still one line before any work), then starts the same command again with ``detach=false``
as a new session (it survives the terminal closing), its output in ``<sweep>/driver.log``,
and returns. That driver takes the sweep's lock like any other, so starting the command
again while it runs is refused with who holds the sweep; ``python -m sweeper.status``
follows it (and names the driver).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sweeper.jobstate import process_alive

DRIVER_LOG = "driver.log"
DRIVER_LOCK = ".driver.lock"  # the sweep's lock (hydra_plugins/sr_sweeper/sweep_lock.py): who drives it
DRIVER_STALE_S = 600.0  # a lock whose heartbeat is this old is stale: its driver is gone (or frozen)
DETACH = "hydra.launcher.detach="


def relaunch_in_background(sweep_dir: Path, argv: list[str] | None = None) -> tuple[int, Path]:
    """Start this command again, attached to nothing, with ``hydra.launcher.detach=false``:
    (its pid, its log file)."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith(DETACH)]
    log_path = Path(sweep_dir) / DRIVER_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sweeper", *args, f"{DETACH}false"], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd(),
                                env={**os.environ, "HYDRA_FULL_ERROR": os.environ.get("HYDRA_FULL_ERROR", "0")})
    return proc.pid, log_path


def driver_line(sweep_dir: Path) -> str | None:
    """Who drives the sweep now, from its lock: "driver: host pid 123 since 10:02:03 (log ...)",
    or None when no driver holds it."""
    try:
        holder = json.loads((Path(sweep_dir) / DRIVER_LOCK).read_text())
        started, beat = float(holder["started"]), float(holder["heartbeat"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if time.time() - beat > DRIVER_STALE_S or process_alive(holder) is False:
        return None  # a stale lock: its driver is gone
    log_path = Path(sweep_dir) / DRIVER_LOG
    return (f"driver: {holder.get('host')} pid {holder.get('pid')}, since {time.strftime('%H:%M:%S', time.localtime(started))}"
            f" (heartbeat {time.time() - beat:.0f} s ago)" + (f"; log {log_path}" if log_path.exists() else ""))

