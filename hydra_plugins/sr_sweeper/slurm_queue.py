"""The SLURM driver's watch on its queued tasks: how long they have been pending, and why.

submitit's wait is silent: a task that can never start (a request no node meets, a partition
limit, a hold) used to keep the sweep waiting for ever with no word. While the driver waits,
``QueueWatch`` asks ``squeue`` every ``poll_s`` and logs the pending tasks, grouped by reason:
at once when a task starts pending or its reason changes, then again every ``REMIND_POLLS``
polls while it stands; a reason that will not clear by itself is a warning saying what to do
(``sweeper.status.pending_note``, the line ``python -m sweeper.status`` shows too).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from sweeper.status import pending_note, queue_states

log = logging.getLogger(__name__)

REMIND_POLLS = 10


def task_label(tasks: list[str]) -> str:
    """"123_4" for one task, "123_[0,2,5]" for several of one array (at most 8 indices shown)."""
    if len(tasks) == 1:
        return tasks[0]
    array = tasks[0].split("_")[0]
    indices = [t.split("_", 1)[-1] for t in tasks]
    shown = ",".join(indices[:8]) + (f",... {len(indices)} in all" if len(indices) > 8 else "")
    return f"{array}_[{shown}]"


class QueueWatch:
    """``with QueueWatch(tasks, request, poll_s):`` around the wait for the tasks' results."""

    def __init__(self, tasks: list[str], request: dict, poll_s: float, progress=None):
        self.tasks, self.request, self.poll_s = list(tasks), request, poll_s
        self.progress = progress  # a sweeper.sweep_progress.SweepProgress: "k of N done" when it changes
        self.submitted = time.time()
        self.reasons: dict[str, str] = {}  # pending task -> its reason at the last poll
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slurm-queue-watch", daemon=True)

    def __enter__(self) -> QueueWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                for level, line in self.check(queue_states(self.tasks)):
                    log.log(level, line)
                if self.progress is not None:
                    self.progress.report()
            except Exception as e:  # noqa: BLE001 - the watch only informs; the wait goes on without it
                log.debug("slurm queue watch: %s", e)

    def check(self, states: dict[str, tuple[str, str]]) -> list[tuple[int, str]]:
        """The lines one poll logs, from squeue's (state, reason) per task."""
        self.polls += 1
        pending = {t: reason for t, (state, reason) in states.items() if state == "PENDING" and t in self.tasks}
        changed = any(self.reasons.get(t) != reason for t, reason in pending.items())
        self.reasons = pending
        if not pending or not (changed or self.polls % REMIND_POLLS == 0):
            return []
        groups: dict[str, list[str]] = defaultdict(list)
        for task, reason in pending.items():
            groups[reason].append(task)
        lines = []
        for reason, tasks in groups.items():
            note, stuck = pending_note(task_label(tasks), "PENDING", reason, self.submitted, self.request)
            lines.append((logging.WARNING if stuck else logging.INFO,
                          f"{len(tasks)} of {len(self.tasks)} tasks waiting: {note}"))
        return lines
