"""Fault injection for `benchmarks/fault_injection.py`: kill a job at an exact point of its life.

Put this folder first on PYTHONPATH and set ``SR_FAULT=<point>``: every Python process started
with it (the sweep driver, which runs jobs itself under ``launcher=local``, and the worker
processes of ``launcher=local_parallel``) imports this file at start-up and wraps the point's
function, by module attribute, right after its module is first imported. At the
``SR_FAULT_AT``-th call (default 1) that matches, the process sends itself ``SR_FAULT_SIGNAL``
(default KILL: ``kill -9``, nothing runs after it; STOP pauses it for the harness to act, e.g.
delete its folder, and continue it). ``SR_FAULT_TARGET=group`` sends the signal to the process's
whole process group instead, as a terminal does with Ctrl-C (start the command in its own
session). Without ``SR_FAULT`` nothing is patched.

``SR_FAULT_LOG`` (a file) receives one JSON line per event: ``missing`` (the point's module
was imported but has no such function: the code moved, the case cannot run), ``fired``
(written and fsynced just before the signal). Production code is not changed.
"""
from __future__ import annotations

import functools
import importlib.abc
import json
import os
import signal
import sys
from pathlib import Path

POINT = os.environ.get("SR_FAULT", "")
AT = int(os.environ.get("SR_FAULT_AT", "1"))
SIGNAL = getattr(signal, "SIG" + os.environ.get("SR_FAULT_SIGNAL", "KILL"))
LOG = os.environ.get("SR_FAULT_LOG")
GROUP = os.environ.get("SR_FAULT_TARGET") == "group"
_calls = 0


def _record(event: str, **details) -> None:
    line = json.dumps({"event": event, "point": POINT, "pid": os.getpid(), **details})
    print(f"fault-injection: {line}", file=sys.stderr, flush=True)
    if LOG:
        with open(LOG, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def _strike(detail: str) -> None:
    """Count a matching call; at the AT-th, signal this process."""
    global _calls
    _calls += 1
    if _calls == AT:
        _record("fired", call=_calls, detail=detail)
        if GROUP:
            os.killpg(os.getpgrp(), SIGNAL)
        else:
            os.kill(os.getpid(), SIGNAL)


def before(match=lambda *a, **k: True, describe=lambda *a, **k: ""):
    """A wrapper factory: strike before the call, when ``match(*args, **kwargs)``."""
    def wrap(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if match(*args, **kwargs):
                _strike(describe(*args, **kwargs))
            return fn(*args, **kwargs)
        return wrapper
    return wrap


def after(match=lambda *a, **k: True, describe=lambda *a, **k: ""):
    """A wrapper factory: strike after the call returned, when ``match(*args, **kwargs)``."""
    def wrap(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            if match(*args, **kwargs):
                _strike(describe(*args, **kwargs))
            return out
        return wrapper
    return wrap


def _named(position: int, name: str):
    """match: the call's argument at ``position`` (a path) has this file name."""
    return lambda *a, **k: len(a) > position and Path(a[position]).name == name


def _iteration(n: int):
    return lambda self, iteration, *a, **k: iteration == n


def during_evaluation(fn):
    """Strike between two test images of the final evaluation: the evaluation (not a validation)
    is the call given ``should_stop``, which the scoring loop asks before every new image."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "should_stop" in kwargs:
            ask = kwargs["should_stop"]

            def should_stop():
                _strike("before a test image")
                return ask()
            kwargs["should_stop"] = should_stop
        return fn(*args, **kwargs)
    return wrapper


# point -> (module, attribute path, wrapper). Coarse, stable names only.
POINTS = {
    "startup": ("sweeper.jobstate", "JobStatus.__init__", after()),  # status.json says running; nothing trained
    "train-early": ("sweeper.jobstate", "JobStatus.heartbeat", before(_iteration(2))),
    "train-mid": ("sweeper.jobstate", "JobStatus.heartbeat", before(_iteration(11))),
    "checkpoint-rotate": ("os", "replace", before(_named(1, "checkpoint.prev.pt"))),
    "checkpoint-write": ("os", "replace", before(_named(1, "checkpoint.pt"))),  # tmp written, not renamed
    "after-checkpoint": ("srcore.train", "TrainingState.save", after()),
    "validation": ("sweeper.job", "evaluate", before(lambda *a, **k: "should_stop" not in k)),
    "weights-write": ("os", "replace", before(_named(1, "model.pt"))),
    "evaluation": ("sweeper.job", "evaluate", during_evaluation),
    "results-write": ("os", "replace", before(_named(1, "results.json"))),
    "after-results": ("sweeper.jobstate", "write_json", after(_named(0, "results.json"))),
    "wandb-finish-start": ("sweeper.wandb_run", "JobRun.finish", before()),
    "wandb-exit-sent": ("wandb.sdk.interface.interface", "InterfaceBase.deliver_exit", after()),
    "wandb-finish-unrecorded": ("sweeper.jobstate", "JobStatus.write",
                                before(lambda self, **fields: fields.get("wandb_finished"))),
}


def _patch(module) -> None:
    _, attr, wrap = POINTS[POINT]
    owner, *path = [module, *attr.split(".")]
    try:
        for name in path[:-1]:
            owner = getattr(owner, name)
        original = getattr(owner, path[-1])
    except AttributeError:
        _record("missing", where=f"{module.__name__}.{attr}")
        return
    setattr(owner, path[-1], wrap(original))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches ``module`` right after it is executed (before anyone imports names from it)."""

    def __init__(self, module: str):
        self.module = module

    def find_spec(self, name, path=None, target=None):
        if name != self.module:
            return None
        sys.meta_path.remove(self)
        try:
            from importlib.util import find_spec
            spec = find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def patched_exec(module):
            exec_module(module)
            _patch(module)
        spec.loader.exec_module = patched_exec
        return spec


if POINT:
    if POINT not in POINTS:
        _record("missing", where=f"no fault point named {POINT!r}; known: {', '.join(POINTS)}")
    elif POINTS[POINT][0] in sys.modules:
        _patch(sys.modules[POINTS[POINT][0]])
    else:
        sys.meta_path.insert(0, _PatchOnImport(POINTS[POINT][0]))
