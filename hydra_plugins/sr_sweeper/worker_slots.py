"""The job processes of ``LocalParallelLauncher``: one long-lived worker per slot, pinned to its
GPU with its share of the CPU threads, running the jobs it is sent one after the other; and the
``JobReturn`` helpers the launchers share.

A worker that dies (killed, segfault, out of memory) fails only its current job and is replaced.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

log = logging.getLogger(__name__)


def failed_return(overrides: Sequence[str], error: BaseException) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret.return_value = error
    return ret


def job_error(ret: JobReturn):
    """A failed job's exception. Hydra's public ``JobReturn.return_value`` re-raises it (and
    prints a line to stderr), so this reads the private field: the one private read left here."""
    return ret._return_value


def use_threads(threads: int | None) -> None:
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        import torch
        torch.set_num_threads(threads)


def stop_with_parent() -> None:
    """SIGTERM this process when the driver dies (Linux): its job saves its state and stops, as on
    any stop signal. Without it a killed driver left workers finishing their jobs unseen, and the
    next driver, finding the sweep's lock stale, started the same jobs a second time."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the driver died before the call above
            os.kill(os.getpid(), signal.SIGTERM)


def worker_main(conn, device: str | None, threads: int | None, log_path: str) -> None:
    """A long-lived job process: pinned to one GPU, imports paid once, runs jobs it is sent."""
    stop_with_parent()
    os.environ["CUDA_VISIBLE_DEVICES"] = device if device is not None else ""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    use_threads(threads)
    import cloudpickle

    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        fn, args, jobs = cloudpickle.loads(payload)  # jobs: the overrides of each job the task runs
        exiting = None
        try:
            ret = fn(*args)
            rets = list(ret) if isinstance(ret, (list, tuple)) else [ret]
        except SystemExit as e:  # a stop signal: the job saved its state and asks to end this process
            rets, exiting = [failed_return(o, RuntimeError(f"interrupted (exit {e.code}); state saved, run the sweep "
                                                           "again to resume")) for o in jobs], e
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which lists the failure
            rets = [failed_return(o, e) for o in jobs]
        try:
            data = cloudpickle.dumps(rets)
        except Exception:  # an unpicklable exception: keep its text
            data = cloudpickle.dumps([failed_return(o, RuntimeError(repr(job_error(r)))) if r.status == JobStatus.FAILED
                                      else r for o, r in zip(jobs, rets)])
        conn.send_bytes(data)
        if exiting is not None:
            raise exiting


class WorkerSlots:
    """The worker processes, one per slot: slot k runs on GPU ``gpus[k % len(gpus)]`` (round-robin;
    none without GPUs) and writes its output to ``<logs>/slot<k>.log``. An entry may hold several
    GPUs ("0,1": the slot of a job on 2 GPUs, ``train.gpus``; its rank 0 starts the other ranks)."""

    def __init__(self, gpus: list[str], threads: int, logs: Path):
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")  # a fresh interpreter: no CUDA state or locks inherited
        self.gpus, self.threads, self.logs = gpus, threads, logs
        self.workers: dict[int, tuple[Any, Any]] = {}  # slot -> (process, its end of the pipe)
        self.busy: dict[int, tuple[list[int], list[Sequence[str]]]] = {}  # slot -> (its jobs' indices, overrides)

    def gpu_of(self, slot: int) -> str | None:
        return self.gpus[slot % len(self.gpus)] if self.gpus else None

    def log_path(self, slot: int) -> Path:
        return self.logs / f"slot{slot}.log"

    def start(self, slot: int) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker_main, args=(child, self.gpu_of(slot), self.threads,
                                                          str(self.log_path(slot))), name=f"sr-slot{slot}")
        proc.start()
        child.close()
        self.workers[slot] = (proc, parent)

    def idle(self) -> list[int]:
        return [s for s in self.workers if s not in self.busy]

    def send(self, slot: int, indices: list[int], overrides: list[Sequence[str]], task: tuple) -> None:
        """Run ``task`` ((function, args), pickled by cloudpickle) on the slot: the jobs ``indices``
        (one, or a fused group) with their ``overrides``."""
        import cloudpickle

        self.workers[slot][1].send_bytes(cloudpickle.dumps((*task, [list(o) for o in overrides])))
        self.busy[slot] = (list(indices), list(overrides))

    def ended(self, more_jobs: bool):
        """Wait until tasks end; yield each of their jobs as (job index, its ``JobReturn``: a
        failed one when its process died). After each, a slot whose process is gone gets a fresh
        worker if ``more_jobs``, else is closed."""
        import cloudpickle

        ready = wait([self.workers[s][1] for s in self.busy] + [self.workers[s][0].sentinel for s in self.busy])
        for slot, (indices, overrides) in list(self.busy.items()):
            proc, conn = self.workers[slot]
            if conn in ready or proc.sentinel in ready:
                try:
                    rets = cloudpickle.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    proc.join()
                    rets = [failed_return(o, RuntimeError(f"job process died (exit code {proc.exitcode}); log: "
                                                          f"{self.log_path(slot)}")) for o in overrides]
                del self.busy[slot]
                yield from zip(indices, rets)
                if not proc.is_alive() or proc.sentinel in ready:
                    proc.join(timeout=10)
                    conn.close()
                    self.start(slot) if more_jobs else self.workers.pop(slot)

    def stop_jobs(self) -> None:
        """Let each running job save its state (SIGTERM -> checkpoint -> exit); a rerun resumes."""
        for proc, _ in self.workers.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc, _ in self.workers.values():
            proc.join(timeout=120)

    def close(self) -> None:
        for proc, conn in self.workers.values():
            conn.close()  # the worker sees EOF and ends
        for proc, _ in self.workers.values():
            proc.join(timeout=30)
