"""A job's state on disk, so that anyone (``python -m sweeper.status``, the sweeper after a
crash, a requeued job) can tell where it stands without a server.

Each job folder holds ``status.json`` (rewritten atomically as the job runs) and, once
it has finished, ``results.json``. The sweep folder holds ``jobs.json``: every job of the
grid, written before anything is launched, so that jobs not started yet show as pending.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from srcore.atomic import atomic_write

STATUS = "status.json"
RESULTS = "results.json"
MANIFEST = "jobs.json"

# running: the job said so and its process is alive (or its heartbeat is fresh);
# interrupted: stopped on a preemption/timeout notice with its state saved (a requeue or
# rerun resumes it); failed: an exception, a NaN loss, or the process vanished; pruned:
# stopped early by an Optuna pruner (a clean end).
STATES = ("pending", "running", "interrupted", "failed", "pruned", "done")
HEARTBEAT_STALE_S = 600.0  # a job on another host that has been silent this long is presumed dead


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_results(job_dir: Path) -> dict | None:
    """The job's ``results.json`` if it is complete (a JSON object with its metrics), else None:
    only a complete file marks a job done; a truncated or empty one is a job to run again."""
    results = read_json(Path(job_dir) / RESULTS)
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict) or not results["metrics"]:
        return None
    return results


def wandb_run_missing(job_dir: Path, results: dict) -> bool:
    """Whether a job that logged to wandb (its results say so: ``config.logger.mode`` not
    ``disabled``) has lost its wandb run: no ``wandb/*run-*/run-<id>.wandb`` in its folder (the
    folder, or its ``wandb/``, was deleted while or after it ran). Such a job is not done: the
    run's history cannot be rebuilt from ``results.json``, so ``sweeper.job.run_job`` runs it
    again. A job killed before its wandb run finished (``wandb_finished`` False) is the other
    case: its run is completed from its results."""
    mode = ((results.get("config") or {}).get("logger") or {}).get("mode")
    run_id = results.get("run_id")
    if mode in (None, "disabled") or not run_id:
        return False
    if (read_json(Path(job_dir) / STATUS) or {}).get("wandb_finished") is False:
        return False
    return not any(Path(job_dir).glob(f"wandb/*run-*/run-{run_id}.wandb"))


def is_done(job_dir: Path) -> bool:
    """Nothing is left to do for the job: its results are complete and its wandb run finished.
    A job killed between writing ``results.json`` and finishing its wandb run (status.json's
    ``wandb_finished`` is still False) is launched again, and ``sweeper.job.run_job`` only
    completes the run from its results; folders written before that field existed count as done.
    A job whose wandb run is gone (``wandb_run_missing``) is launched again and runs anew."""
    results = read_results(job_dir)
    if results is None or wandb_run_missing(job_dir, results):
        return False
    return (read_json(Path(job_dir) / STATUS) or {}).get("wandb_finished", True) is not False


def write_json(path: Path, data: dict) -> None:
    atomic_write(Path(path), lambda f: json.dump(data, f, indent=1), mode="w")


def where() -> dict:
    """This process's identity: enough to tell later whether it is still alive."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID")),
            "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


class JobStatus:
    """The job's own writer of ``status.json``; heartbeats are throttled to one per ``every_s``."""

    def __init__(self, job_dir: Path, job_name: str, iterations: int, every_s: float = 2.0,
                 overrides: list[str] | None = None):
        self.path = Path(job_dir) / STATUS
        previous = read_json(self.path) or {}
        now = time.time()
        # "overrides": what the job computes (sweeper.naming.result_overrides), for readers
        # that must not import the sweeper (analysis/)
        self.data = {"job": job_name, "overrides": overrides or [], "state": "running", "iterations": iterations,
                     "iteration": 0,
                     "val_psnr": previous.get("val_psnr"),
                     "started": previous.get("started", now), "attempt_started": now,
                     "attempt": previous.get("attempt", 0) + 1, "reason": None,
                     "wandb_finished": False,  # until the job's wandb run is finished (see is_done)
                     "updated": now, **where()}
        self.every_s = every_s
        self._last_write = 0.0
        self.write()

    def write(self, **fields) -> None:
        self.data.update(fields, updated=time.time())
        write_json(self.path, self.data)
        self._last_write = time.monotonic()

    def heartbeat(self, iteration: int) -> None:
        self.data["iteration"] = iteration
        if time.monotonic() - self._last_write >= self.every_s:
            self.write()


def record_failure(job_dir: Path, reason: str) -> None:
    """Mark a job failed from outside it (the launcher saw its process die)."""
    path = Path(job_dir) / STATUS
    data = read_json(path) or {}
    if data.get("state") == "failed" or is_done(job_dir):
        return
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    write_json(path, {**data, "state": "failed", "reason": reason, "updated": time.time()})


def job_labels(overrides: list[list[str]]) -> list[str]:
    """Short labels for the jobs of a sweep: only the overrides that differ between jobs."""
    varying = {o.split("=", 1)[0] for job in overrides for o in job
               if any(o not in other for other in overrides)}
    return [" ".join(o for o in job if o.split("=", 1)[0] in varying) or " ".join(job) or "(defaults)"
            for job in overrides]


def process_alive(status: dict) -> bool | None:
    """True/False when the job ran on this host (its pid can be checked), else None."""
    if status.get("host") != socket.gethostname() or not status.get("pid"):
        return None
    try:
        os.kill(int(status["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_state(job_dir: Path) -> tuple[str, dict]:
    """(state, details) of one job folder, reading what the job left behind."""
    job_dir = Path(job_dir)
    results = read_results(job_dir)
    status = read_json(job_dir / STATUS) or {}
    if results is not None and wandb_run_missing(job_dir, results):
        return "failed", {**status, "results": results, "reason": f"its wandb run {results['run_id']} is missing from "
                          f"{job_dir / 'wandb'}; the same command runs the job again"}
    if results is not None:
        return "done", {**status, "results": results}
    state = status.get("state")
    if state is None:
        return "pending", status
    if state == "running":
        alive = process_alive(status)
        stale = time.time() - status.get("updated", 0) > HEARTBEAT_STALE_S
        if alive is False or (alive is None and stale):
            why = "its process is gone" if alive is False else f"no heartbeat for {HEARTBEAT_STALE_S:.0f} s"
            return "failed", {**status, "reason": f"killed or crashed: {why} (last iteration {status.get('iteration')})"}
        return "running", status
    if state in ("failed", "interrupted", "pruned"):
        return state, status
    return "pending", status
