"""One driver per sweep folder: the lock a sweep holds while it launches and waits for its jobs.

The same command started twice (two terminals, a retry while the first still runs, two login
nodes) would otherwise launch every unfinished job twice: two processes writing one job folder,
two wandb runs per job. The lock is a file in the sweep folder created with O_CREAT|O_EXCL
(atomic on local disks and NFSv3+, so it also works across the nodes of a cluster), holding
who holds it (host, pid), since when, and a heartbeat a thread refreshes every
``HEARTBEAT_S``. It is stale, and is taken over, when its process is gone (same host) or its
heartbeat is older than ``STALE_S`` (any host: a driver on another node cannot be asked).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

from srcore.atomic import atomic_write
from sweeper.background import DRIVER_LOCK, DRIVER_STALE_S
from sweeper.jobstate import process_alive
from sweeper.preflight import PreflightError

log = logging.getLogger(__name__)

LOCK = DRIVER_LOCK
HEARTBEAT_S = 30.0
STALE_S = DRIVER_STALE_S  # 20 heartbeats missed: the driver is gone (or frozen; it stops claiming the lock)


class SweepLocked(PreflightError):
    """Another live driver holds the sweep; the message says who, since when and what to do.

    A ``PreflightError``, and caught as one: Hydra's plugin scan executes the modules of
    ``hydra_plugins`` again, so a class defined here may exist twice."""


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def stale_reason(holder: dict, now: float | None = None) -> str | None:
    """Why a lock's holder is presumed gone, or None while it may still be running."""
    now = time.time() if now is None else now
    if process_alive(holder) is False:
        return f"its process {holder.get('pid')} is gone"
    silent = now - float(holder.get("heartbeat", 0))
    if silent > STALE_S:
        return f"no heartbeat for {silent:.0f} s (stale after {STALE_S:.0f} s)"
    return None


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


class SweepLock:
    """``with SweepLock(sweep_dir):`` holds the sweep or raises ``SweepLocked``."""

    def __init__(self, sweep_dir: Path):
        self.path = Path(sweep_dir) / LOCK
        self.token = uuid.uuid4().hex
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                       "token": self.token}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SweepLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock taken over, or one released between two looks
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="sweep-lock-heartbeat", daemon=True)
                self._thread.start()
                return
            holder = _read(self.path)
            if holder is None:  # released meanwhile, being written, or left empty by a killed driver
                why = self._unreadable()
                if why is None:
                    time.sleep(0.5)
                    continue
                holder = {}
            else:
                why = stale_reason(holder)
            if why is None:
                raise SweepLocked(self._refusal(holder))
            self._take_over(holder, why)
        raise SweepLocked(f"sweep lock {self.path} keeps changing hands; is another driver starting? "
                          "Try again in a minute")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({**self.holder, "heartbeat": time.time()}, f)
        return True

    def _unreadable(self) -> str | None:
        """Why a lock file that holds no readable holder is stale (older than a write takes)."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        return f"its lock file is unreadable and {age:.0f} s old" if age > 10 else None

    def _refusal(self, holder: dict) -> str:
        beat = time.time() - float(holder.get("heartbeat", 0))
        return (f"this sweep is already being run by {holder.get('host')} pid {holder.get('pid')} since "
                f"{_when(float(holder.get('started', 0)))} (heartbeat {beat:.0f} s ago); follow it with "
                f"`python -m sweeper.status {self.path.parent}`, or if that driver is gone, delete {self.path} "
                f"(a lock whose heartbeat is {STALE_S:.0f} s old is taken over automatically)")

    def _take_over(self, holder: dict, why: str) -> None:
        """Move the stale lock aside, then check it was the one judged stale: another driver may
        have taken it over and locked again in between, and its fresh lock must stay."""
        aside = self.path.with_name(f"{LOCK}.{self.token}.stale")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        moved = _read(aside)
        if moved is not None and moved.get("token") != holder.get("token"):
            try:
                os.link(aside, self.path)  # put the live lock back (unless yet another one is there)
            except FileExistsError:
                pass
        else:
            who = f"{holder.get('host')} pid {holder.get('pid')} (since {_when(float(holder.get('started', 0)))})"
            log.warning("took over the sweep lock of %s: %s", who if holder else "an unreadable lock file", why)
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            current = _read(self.path)
            if current is not None and current.get("token") != self.token:
                log.warning("lost the sweep lock %s to %s pid %s (this driver was silent for over %.0f s)",
                            self.path, current.get("host"), current.get("pid"), STALE_S)
                return
            data = {**self.holder, "heartbeat": time.time()}
            atomic_write(self.path, lambda f, data=data: json.dump(data, f), mode="w")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        current = _read(self.path)
        if current is not None and current.get("token") == self.token:
            self.path.unlink(missing_ok=True)
