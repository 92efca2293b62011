"""Launchers for sweeps on a multi-GPU box and on SLURM, built on submitit.

Both fix what the stock submitit launchers leave to the user (ECOSYSTEM.md):
- a job that dies (killed, out of memory, cancelled) comes back as a failed ``JobReturn``
  with its reason instead of ending the whole sweep, so the sweeper can list it;
- each job gets its share of the CPU threads;
- ``LocalParallelLauncher`` caps the number of jobs running at once and pins each
  running job to its own GPU (``CUDA_VISIBLE_DEVICES``), round-robin over the GPUs.
Requeue on timeout/preemption is submitit's (``checkpoint`` resubmits the same job); the
job itself saves and resumes its state (``sweeper.preemption``).
"""
from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

log = logging.getLogger(__name__)


def failed_return(overrides: Sequence[str], error: BaseException) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret._return_value = error
    return ret


def collect(job, overrides: Sequence[str]) -> JobReturn:
    """The job's JobReturn, or a failed one saying why there is none (killed, cancelled...)."""
    try:
        return job.results()[0]
    except Exception as e:  # submitit's FailedJobError / UncompletedJobError
        try:
            state = job.state  # SLURM: from sacct, e.g. "CANCELLED by 0", "TIMEOUT", "OUT_OF_MEMORY"
        except Exception:  # noqa: BLE001 - the state is only a detail of the message
            state = "UNKNOWN"
        detail = " ".join(str(e).split())
        return failed_return(overrides, RuntimeError(
            f"job process ended without a result (state: {state}); logs: {job.paths.stderr}; submitit: {detail}"))


def use_threads(threads: int | None) -> None:
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        import torch
        torch.set_num_threads(threads)


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES if set, else all of them."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


class LocalParallelLauncher(BaseSubmititLauncher):
    """Jobs as local processes, at most ``max_parallel`` at a time, one GPU each."""

    _EXECUTOR = "local"

    def __init__(self, max_parallel: int | None = None, gpus: Sequence[Any] | None = None,
                 threads_per_job: int | None = None, poll_s: float = 0.1, **params: Any) -> None:
        super().__init__(**params)
        self.gpus = [str(g) for g in gpus] if gpus is not None else None
        self.max_parallel = max_parallel
        self.threads_per_job = threads_per_job
        self.poll_s = poll_s

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state,
                 device: str | None = None, threads: int | None = None) -> JobReturn:
        # Runs in the job's own process, before anything touches CUDA.
        os.environ["CUDA_VISIBLE_DEVICES"] = device if device is not None else ""
        use_threads(threads)
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def plan(self) -> tuple[int, list[str], int]:
        """(cap on concurrent jobs, GPUs to hand out, CPU threads per job)."""
        gpus = self.gpus if self.gpus is not None else visible_gpus()
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        cap = self.max_parallel or (len(gpus) if gpus else max(1, cpus // 2))
        if cap < 1:
            raise ValueError(f"hydra.launcher.max_parallel={self.max_parallel} is invalid: it must be >= 1")
        threads = self.threads_per_job or max(1, cpus // cap)
        return cap, gpus, threads

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        cap, gpus, threads = self.plan()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"])
        executor.update_parameters(timeout_min=self.params.get("timeout_min", 60 * 24 * 7))
        log.info("local_parallel: %d jobs, at most %d at once, GPUs %s, %d CPU threads each",
                 len(job_overrides), cap, ",".join(gpus) or "none", threads)

        pending = deque(enumerate(job_overrides))
        free_slots = list(range(cap))
        running: dict[int, tuple[Any, int]] = {}
        results: list[JobReturn | None] = [None] * len(job_overrides)
        try:
            while pending or running:
                while pending and free_slots:
                    slot = free_slots.pop(0)
                    i, overrides = pending.popleft()
                    device = gpus[slot % len(gpus)] if gpus else None
                    job = executor.submit(self, list(overrides), "hydra.sweep.dir", initial_job_idx + i,
                                          f"job_id_for_{initial_job_idx + i}", Singleton.get_state(), device, threads)
                    running[i] = (job, slot)
                    log.info("\t#%d started (GPU %s): %s", initial_job_idx + i, device,
                             " ".join(filter_overrides(overrides)))
                time.sleep(self.poll_s)
                for i, (job, slot) in list(running.items()):
                    if job.done():
                        results[i] = collect(job, job_overrides[i])
                        free_slots.append(slot)
                        del running[i]
        except KeyboardInterrupt:
            # Let each running job save its state (SIGTERM -> checkpoint -> exit); a rerun resumes.
            for job, _ in running.values():
                if job._process is not None:
                    job._process.send_signal(signal.SIGTERM)
            for job, _ in running.values():
                if job._process is not None:
                    job._process.wait(timeout=120)
            raise
        return results


class SlurmLauncher(BaseSubmititLauncher):
    """submitit's SLURM job array, with every job's outcome collected and CPU threads set."""

    _EXECUTOR = "slurm"

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state) -> JobReturn:
        use_threads(self.params.get("cpus_per_task"))
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in self.params.items()
                                      if k not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        args = [(list(o), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
                 Singleton.get_state()) for i, o in enumerate(job_overrides)]
        jobs = executor.map_array(self, *zip(*args))
        log.info("slurm: submitted %d jobs as array %s", len(jobs), jobs[0].job_id.split("_")[0] if jobs else "-")
        return [collect(job, o) for job, o in zip(jobs, job_overrides)]
