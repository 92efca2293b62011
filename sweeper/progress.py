"""What a person watching a job sees: progress bars with an ETA on a terminal, plain periodic
lines elsewhere, and the job's headline metrics at its end.

- On a terminal (``sys.stderr`` is a TTY; ``logger.progress=auto``, the default): a tqdm bar for
  training (iterations, it/s, ETA, the loss of the last log step, the last validation PSNR)
  and one for evaluation (images x degradations). The console's log lines are written above
  the bars (``tqdm.write``), and srcore's per-log-step ``iter ...`` lines, which the bar
  shows, stay in the log file only.
- Anywhere else (SLURM logs, CI, worker logs; ``logger.progress=plain``): a plain log line at
  most every ``logger.progress_every_s`` seconds and at the end of each phase, e.g.
  ``train 120/400 (30%)  4.1 it/s  ETA 1m08s  loss 0.0421  val 24.31 dB``. No carriage
  returns or escape sequences: the job's log file (``<job>/app.log``) holds only such lines.
- ``logger.progress=off``: neither (the log lines of srcore stay).

The callbacks fit ``srcore.train.train`` (``on_iteration(iteration)``, ``log_metrics(metrics,
step)``) and ``srcore.evaluation.evaluate`` (``on_progress(done, total)``).
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time

log = logging.getLogger(__name__)

MODES = ("auto", "bar", "plain", "off")


def resolve_mode(mode: str, stream=None) -> str:
    """``auto`` -> ``bar`` when ``stream`` (default ``sys.stderr``) is a terminal, else ``plain``."""
    if mode not in MODES:
        raise ValueError(f"logger.progress={mode!r} is unknown; allowed: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "plain"
    except (AttributeError, ValueError):  # a closed or unusual stream
        return "plain"


def format_seconds(s: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``; ``9.4`` -> ``9s``."""
    if not math.isfinite(s) or s < 0:
        return "?"
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class _ConsoleFilter(logging.Filter):
    """Drops srcore.train's per-step ``iter ...`` lines from the terminal (the bar shows them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "srcore.train" and str(record.msg).startswith("iter "))


class _TqdmHandler(logging.StreamHandler):
    """A console handler that writes above the bars."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never fail the job
            self.handleError(record)


def _is_console(handler: logging.Handler) -> bool:
    return (type(handler) is logging.StreamHandler or isinstance(handler, _TqdmHandler)) and \
        getattr(handler, "stream", None) in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


class JobProgress:
    """One job's progress display. Use as a context manager around training and evaluation;
    ``close`` (or leaving the block) ends the bars and restores the console handlers."""

    def __init__(self, mode: str = "auto", every_s: float = 30.0, total_iterations: int = 0,
                 val_key: str | None = None, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.mode = resolve_mode(mode, self.stream)
        self.every_s = float(every_s)
        self.total = int(total_iterations)
        self.val_key = val_key
        self.loss = self.val = None
        self._bars: dict[str, object] = {}
        self._swapped: list[tuple[logging.Logger, list[logging.Handler]]] = []
        self._phase: dict[str, dict] = {}  # phase -> {t0, n0, t1, n1, last}
        self._begun: dict[str, float] = {}  # phase -> when it began (``begin``), until its first report

    # -- console handlers ---------------------------------------------------------------------
    def __enter__(self) -> JobProgress:
        return self.start()

    def start(self) -> JobProgress:
        """On a terminal, route the console's log lines above the bars."""
        if self.mode == "bar" and not self._swapped:
            root = logging.getLogger()
            handlers = list(root.handlers)
            new = []
            for h in handlers:
                if _is_console(h) and not isinstance(h, _TqdmHandler):
                    t = _TqdmHandler(h.stream)
                    t.setLevel(h.level)
                    t.setFormatter(h.formatter)
                    for f in h.filters:
                        t.addFilter(f)
                    t.addFilter(_ConsoleFilter())
                    new.append(t)
                else:
                    new.append(h)
            self._swapped.append((root, handlers))
            root.handlers = new
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        for logger, handlers in self._swapped:
            logger.handlers = handlers
        self._swapped.clear()

    def begin(self, phase: str) -> None:
        """Mark the start of ``train`` or ``eval``: the plain lines' rate and time count from here
        (else from the phase's first report, which leaves its first step out)."""
        self._begun[phase] = time.perf_counter()

    # -- training -----------------------------------------------------------------------------
    def on_iteration(self, iteration: int) -> None:
        """``srcore.train.train``'s ``on_iteration``: after every optimisation step."""
        self._advance("train", iteration, self.total)

    def log_metrics(self, metrics: dict, step: int) -> None:
        """``srcore.train.train``'s ``log_metrics``: remember the loss and validation PSNR."""
        if "train/loss" in metrics:
            self.loss = float(metrics["train/loss"])
        val = metrics.get(self.val_key) if self.val_key else None
        if val is None:
            val = next((v for k, v in metrics.items() if k.startswith("val/") and k.endswith("/psnr")), None)
        if val is not None:
            self.val = float(val)
        bar = self._bars.get("train")
        if bar is not None:
            bar.set_postfix_str(self._postfix(), refresh=False)

    # -- evaluation ---------------------------------------------------------------------------
    def on_eval(self, done: int, total: int) -> None:
        """``srcore.evaluation.evaluate``'s ``on_progress``: after every image x degradation."""
        self.close_bar("train")
        self._advance("eval", done, total)

    def on_seal(self, done: int, total: int) -> None:
        """SEAL's ``on_progress``: after every batch of images x cases."""
        self.close_bar("train")
        self.close_bar("eval")
        self._advance("SEAL", done, total)

    def close_bar(self, phase: str) -> None:
        bar = self._bars.pop(phase, None)
        if bar is not None:
            bar.close()

    # -- the job's end ------------------------------------------------------------------------
    def finished(self, job_name: str, metrics: dict, test_sets: list[str], results_path) -> None:
        """One or two lines: mean PSNR per test degradation on the first test set, and where the
        results are."""
        self.close()
        for line in headline(metrics, test_sets) + seal_headline(metrics):
            log.info("%s", line)
        log.info("results: %s", results_path)

    # -- internals ----------------------------------------------------------------------------
    def _postfix(self) -> str:
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.val is not None:
            parts.append(f"val {self.val:.2f} dB")
        return "  ".join(parts)

    def _advance(self, phase: str, n: int, total: int) -> None:
        if self.mode == "off":
            return
        now = time.perf_counter()
        state = self._phase.get(phase)
        if state is None:  # the first report: a resumed job starts at n - 1
            t0 = self._begun.pop(phase, now)
            # rate and ETA from the first report on (start-up left out), "took" from the beginning
            state = self._phase[phase] = {"t0": t0, "n0": max(n - 1, 0), "t1": now, "n1": n, "last": now}
        if self.mode == "bar":
            self._bar_to(phase, n, total, state)
        else:
            last = total and n >= total
            if last or now - state["last"] >= self.every_s:
                state["last"] = now
                steady = n > state["n1"] and now > state["t1"] and not last  # the last line: overall
                rate = ((n - state["n1"]) / (now - state["t1"]) if steady else
                        (n - state["n0"]) / (now - state["t0"]) if now > state["t0"] else float("nan"))
                log.info("%s", self._line(phase, n, total, now - state["t0"], rate))

    def _bar_to(self, phase: str, n: int, total: int, state: dict) -> None:
        from tqdm import tqdm

        bar = self._bars.get(phase)
        if bar is None:
            desc = {"train": "train", "eval": "eval (images x degradations)"}.get(phase, f"{phase} (images x cases)")
            columns, lines = _size(self.stream)  # a pseudo-terminal may report 0 (tqdm then draws nothing)
            sized = columns > 0 and lines > 0
            bar = self._bars[phase] = tqdm(total=total or None, initial=state["n0"], desc=desc, file=self.stream,
                                           unit="it" if phase == "train" else "img", dynamic_ncols=sized,
                                           ncols=None if sized else columns or 100,
                                           nrows=None if sized else lines or 24, leave=True, mininterval=0.2,
                                           smoothing=0.1)
            if phase == "train":
                bar.set_postfix_str(self._postfix(), refresh=False)
        bar.update(n - bar.n)
        if total and n >= total:
            self.close_bar(phase)

    def _line(self, phase: str, n: int, total: int, elapsed: float, rate: float) -> str:
        head = f"{phase} {n}/{total}" if total else f"{phase} {n}"
        parts = [head + (f" ({100 * n / total:.0f}%)" if total else "")]
        if phase == "train":
            parts.append(f"{rate:.1f} it/s" if math.isfinite(rate) else "? it/s")
        else:
            parts.append(f"{rate:.1f} img/s" if math.isfinite(rate) else "? img/s")
        if total and n < total:
            parts.append(f"ETA {format_seconds((total - n) / rate) if rate > 0 else '?'}")
        else:
            parts.append(f"took {format_seconds(elapsed)}")
        if phase == "train" and self._postfix():
            parts.append(self._postfix())
        return "  ".join(parts)


def _size(stream) -> tuple[int, int]:
    """(columns, lines) of the terminal behind ``stream``; 0 where unknown."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


def headline(metrics: dict, test_sets: list[str], metric: str = "psnr") -> list[str]:
    """``PSNR on <first set> (dB): clean 25.80  blur 24.54 ...`` from a job's metrics
    (``test/<set>/<degradation>/<metric>``), plus the mean over all sets when there are several."""
    lines = []
    sets = [s for s in test_sets if any(k.startswith(f"test/{s}/") for k in metrics)]
    if not sets:
        return lines

    def per_degradation(keep) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for k, v in metrics.items():
            parts = k.split("/")
            if len(parts) == 4 and parts[0] == "test" and parts[3] == metric and keep(parts[1]):
                out.setdefault(parts[2], []).append(float(v))
        return out

    def line(label: str, values: dict[str, list[float]]) -> str:
        return f"{metric.upper()} {label} (dB): " + "  ".join(f"{d} {sum(v) / len(v):.2f}" for d, v in values.items())

    lines.append(line(f"on {sets[0]}", per_degradation(lambda s: s == sets[0])))
    if len(sets) > 1:
        lines.append(line(f"mean over {len(sets)} sets", per_degradation(lambda s: s in sets)))
    return lines


def seal_headline(metrics: dict, metric: str = "psnr_y") -> list[str]:
    """``SEAL (psnr_y): PSNR-S 24.31  AR 0.08  RPR_I 0.12 ...`` from a job's ``seal/<metric>/<stat>``
    metrics; nothing when the job was not scored on SEAL."""
    stats = [(k.rsplit("/", 1)[1], v) for k, v in metrics.items() if k.startswith(f"seal/{metric}/")]
    if not stats:
        return []
    shown = [f"{'PSNR-S' if s == 'S' else s} {int(v) if s == 'cases' else f'{float(v):.2f}'}" for s, v in stats]
    return [f"SEAL ({metric}): " + "  ".join(shown)]
