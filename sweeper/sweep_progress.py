"""The driver's running count of a sweep: "sweep: 3 of 9 done, 1 failed, 2 running, ETA 0:04:10".

Counted from the files the jobs leave (``sweeper.jobstate.job_state``), so every launcher
reports the same way: the local one after each job, ``local_parallel`` as each job ends,
SLURM at each poll of its queue watch. The ETA is the time per job finished by this
driver, times the jobs left (jobs that finished earlier do not count toward the rate).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from sweeper.jobstate import job_state

log = logging.getLogger("sweeper")


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class SweepProgress:
    def __init__(self, job_dirs: list[Path]):
        self.job_dirs = list(job_dirs)
        self.t0 = time.monotonic()
        self.counts = self.count()
        self.at_start = self.counts["done"] + self.counts["failed"]
        self._last: Counter | None = None

    def count(self) -> Counter:
        return Counter(job_state(d)[0] for d in self.job_dirs)

    def line(self) -> str:
        c = self.counts = self.count()
        total = len(self.job_dirs)
        over = c["done"] + c["failed"]
        parts = [f"sweep: {c['done']} of {total} done"]
        parts += [f"{c[s]} {s}" for s in ("failed", "running", "interrupted") if c[s]]
        finished_here = over - self.at_start
        left = total - over
        if finished_here > 0 and left > 0:
            parts.append(f"ETA {duration((time.monotonic() - self.t0) / finished_here * left)}")
        return ", ".join(parts)

    def report(self, force: bool = False) -> None:
        """Log the line when a job changed state since the last report (or always, with ``force``)."""
        line = self.line()
        if force or self.counts != self._last:
            log.info(line)
            self._last = self.counts

    def elapsed(self) -> str:
        return duration(time.monotonic() - self.t0)
