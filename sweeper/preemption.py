"""Stop a job cleanly on a preemption or timeout notice, or on Ctrl-C, then hand over to whoever
requeues.

SLURM (through submitit) sends SIGUSR2 before a time limit and on preemption notices;
SIGTERM comes with preemption, ``scancel`` and a plain ``kill``; SIGINT is Ctrl-C in a terminal.
The handlers installed here only raise a flag; the training loop checks it at the next iteration
boundary, saves its full state and raises ``srcore.train.Interrupted``. The job then calls the
handler that was there before ours (submitit's requeue for SIGUSR2) or exits with 128 + the
signal (130 for Ctrl-C), and the next run resumes from the checkpoint. A second Ctrl-C while the
job is still on its way to that point stops it at once (``KeyboardInterrupt``), as Ctrl-C
usually does; the job then resumes from its last regular checkpoint.
"""
from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager: while inside, STOP_SIGNALS set ``requested`` instead of acting."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            # Ctrl-C twice: the user wants out now, not at the next iteration
            previous = self._previous.get(signal.SIGINT)
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        if self.signum is None:
            if signum == signal.SIGINT:
                log.warning("Ctrl-C (SIGINT): saving state at the next iteration and stopping (Ctrl-C again to stop "
                            "at once, losing what was trained since the last checkpoint)")
            else:
                log.warning("received %s: saving state at the next iteration and stopping",
                            signal.Signals(signum).name)
        if self.signum != signal.SIGINT:  # Ctrl-C stays the reason (local_parallel's driver then sends SIGTERM)
            self.signum = signum

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            try:
                previous = signal.getsignal(sig)
                if sig == signal.SIGINT and previous is signal.SIG_IGN:
                    continue  # started with Ctrl-C ignored (nohup, a background job of a script): leave it so
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
        SIGUSR2), else exit with the conventional 128 + signal code (130 for Ctrl-C)."""
        signum = self.signum
        previous = self._previous.get(signum)
        self.__exit__()
        if callable(previous) and signum == signal.SIGUSR2:
            previous(signum, None)  # submitit: checkpoint() -> scontrol requeue -> sys.exit
        raise SystemExit(128 + signum)
