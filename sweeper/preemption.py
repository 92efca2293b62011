"""Stop a job cleanly on a preemption or timeout notice, then hand over to whoever requeues.

SLURM (through submitit) sends SIGUSR2 before a time limit and on preemption notices;
SIGTERM comes with preemption, ``scancel`` and a plain ``kill``. The handlers installed
here only raise a flag; the training loop checks it at the next iteration boundary, saves
its full state and raises ``srcore.train.Interrupted``. The job then calls the handler that
was there before ours (submitit's requeue for SIGUSR2) or exits, and the next run resumes
from the checkpoint.
"""
from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopRequest:
    """Context manager: while inside, STOP_SIGNALS set ``requested`` instead of acting."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _on_signal(self, signum, frame) -> None:
        if self.signum is None:
            log.warning("received %s: saving state at the next iteration and stopping",
                        signal.Signals(signum).name)
        self.signum = signum

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave signals to the default handling
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def hand_over(self) -> None:
        """After the state is saved: let the previous handler requeue (submitit does on
        SIGUSR2), else exit with the conventional 128 + signal code."""
        signum = self.signum
        previous = self._previous.get(signum)
        self.__exit__()
        if callable(previous) and signum == signal.SIGUSR2:
            previous(signum, None)  # submitit: checkpoint() -> scontrol requeue -> sys.exit
        raise SystemExit(128 + signum)
