"""Launchers for sweeps on a multi-GPU box and on SLURM.

Both fix what the stock submitit launchers leave to the user (ECOSYSTEM.md):
- a job that dies (killed, out of memory, cancelled) comes back as a failed ``JobReturn``
  with its reason instead of ending the whole sweep, so the sweeper can list it;
- each job gets its share of the CPU threads;
- ``LocalParallelLauncher`` caps the number of jobs running at once and pins each
  running job to its own GPU (``CUDA_VISIBLE_DEVICES``), round-robin over the GPUs (its
  worker processes: ``worker_slots``).
``SlurmLauncher`` is submitit's job array; requeue on timeout/preemption is submitit's
(``checkpoint`` resubmits the same job) and the job itself saves and resumes its state
(``sweeper.preemption``). Before submitting it checks that a task fits on a node of its
partition; while it waits it reports tasks that stay pending, and why (``slurm_queue``).

A job on N GPUs (``train.gpus=N``, ``sweeper.ranks``) is N processes: ``local``/``local_parallel``
run its rank 0, which starts the others (a ``local_parallel`` slot then holds N GPUs); ``slurm``
submits it as one array task of N tasks (``tasks_per_node=N``, and ``gpus_per_node=N`` where the
sweep asks for GPUs), task 0 the job, the others its helper ranks.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from hydra_plugins.sr_sweeper.slurm_queue import QueueWatch
from hydra_plugins.sr_sweeper.worker_slots import WorkerSlots, failed_return, use_threads
from sweeper.fusion import parse_fuse
from sweeper.jobstate import MANIFEST, STATUS, read_json, read_results
from sweeper.naming import result_overrides
from sweeper.preflight import PreflightError, check_slurm_request, slurm_request
from sweeper.status import NOT_OVER, cluster_states, job_key, live_tasks, record_slurm_tasks

log = logging.getLogger(__name__)


def collect(task, overrides: Sequence[Sequence[str]]) -> list[JobReturn]:
    """The JobReturns of a task's jobs (its pack: one per entry of ``overrides``), or failed
    ones saying why there are none (killed, cancelled...). A result can turn up after
    ``wait_for_result`` gave up on it (accounting lagging behind a requeue): it is used."""
    try:
        return task.results()[0]
    except Exception as e:  # submitit's FailedJobError / UncompletedJobError
        try:
            state = final_state(task)  # e.g. "CANCELLED by 0", "TIMEOUT", "OUT_OF_MEMORY"
        except Exception:  # noqa: BLE001 - the state is only a detail of the message
            state = "UNKNOWN"
        try:  # the result may have come while final_state waited for accounting (a requeued attempt's)
            return task.results()[0]
        except Exception:  # noqa: BLE001 - still none: the first error says why
            pass
        detail = " ".join(str(e).split())
        error = RuntimeError(f"job process ended without a result (state: {state}); logs: {task.paths.stderr}; "
                             f"submitit: {detail}")
        return [failed_return(o, error) for o in overrides]


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES if set, else all of them."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def requested_ranks(config) -> list[int]:
    """The values of ``train.gpus`` a sweep asks for: the config's, and those of the command line's
    ``train.gpus`` override, swept or not (read before any job is composed: for the pre-flight)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = {int(config.train.get("gpus") or 1)}
    parser = OverridesParser.create()
    for text in config.hydra.overrides.get("task", []):
        if text.split("=", 1)[0].lstrip("+~") != "train.gpus":
            continue
        o = parser.parse_override(text)
        values |= {int(v) for v in (o.sweep_string_iterator() if o.is_sweep_override() else [o.value()])}
    return sorted(values)


class JobRanks:
    """The number of ranks (``train.gpus``) of each job of a sweep, from its overrides: an explicit
    ``train.gpus=`` says it; otherwise the job's config says it, composed once per distinct set of
    config-group choices (``preset=``, ``train=``, ``+experiment=``: what may set it)."""

    def __init__(self, launcher):
        self.launcher, self.cache = launcher, {}

    def __call__(self, overrides: Sequence[str]) -> int:
        for o in reversed(list(overrides)):
            key, _, value = o.partition("=")
            if key.lstrip("+~") == "train.gpus":
                return int(value)
        groups = tuple(o for o in overrides if "." not in o.partition("=")[0])
        if groups not in self.cache:
            cfg = self.launcher.hydra_context.config_loader.load_sweep_config(self.launcher.config, list(groups))
            self.cache[groups] = int(cfg.train.get("gpus") or 1)
        return self.cache[groups]


def rank_params(params: dict, n: int) -> dict:
    """SLURM options of one array task running a job on ``n`` ranks: ``n`` tasks on one node (each
    with ``cpus_per_task``), and ``n`` GPUs where the sweep asks for GPUs (``gpus_per_node``)."""
    if n == 1:
        return dict(params)
    out = {**params, "nodes": 1, "tasks_per_node": n}
    if params.get("gpus_per_node"):
        out["gpus_per_node"] = n
    return out


def run_group_task(launcher, overrides: list[list[str]], job_nums: list[int], singleton_state) -> list[JobReturn]:
    """A fused group in this process (a worker, an array task): ``sweeper.group.launch_group``."""
    from hydra.core.utils import setup_globals

    from sweeper.group import launch_group

    Singleton.set_state(singleton_state)
    setup_globals()
    return launch_group(launcher.hydra_context, launcher.config, overrides, job_nums)


class LocalLauncher(BasicLauncher):
    """Hydra's basic launcher (one job after the other, in this process), which also runs fused
    groups (``fuse``: auto | off | K; ``sweeper.fusion``) in this process."""

    def __init__(self, fuse: Any = "auto") -> None:
        super().__init__()
        self.fuse = fuse

    def launch_groups(self, groups: Sequence[Sequence[Sequence[str]]], initial_job_idx: int) -> list[list[JobReturn]]:
        returns, n = [], initial_job_idx
        for group in groups:
            if len(group) == 1:
                returns.append(list(self.launch(group, n)))
            else:
                log.info("Launching a fused group of %d jobs locally", len(group))
                for k, overrides in enumerate(group):
                    log.info("\t#%d : %s", n + k, " ".join(filter_overrides(overrides)))
                returns.append(run_group_task(self, [list(o) for o in group], list(range(n, n + len(group))),
                                              Singleton.get_state()))
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            n += len(group)
        return returns


class LocalParallelLauncher(Launcher):
    """Jobs on this machine, at most ``max_parallel`` at once, each on its own GPU (or
    ``jobs_per_gpu`` of them sharing one: slots go round-robin over the GPUs).

    One worker process per slot, pinned to its GPU (``CUDA_VISIBLE_DEVICES``) with its share
    of the CPU threads, runs the slot's jobs one after the other: the imports and wandb's
    service start once per slot, not once per job. A worker that dies (killed, segfault,
    out of memory) fails only its current job and is replaced."""

    def __init__(self, max_parallel: int | None = None, gpus: Sequence[Any] | None = None,
                 threads_per_job: int | None = None, detach: bool = False, jobs_per_gpu: int = 1,
                 fuse: Any = "auto") -> None:
        self.config = self.hydra_context = self.task_function = None
        self.fuse = fuse  # fused groups (sweeper.fusion): a group runs in one worker
        if int(jobs_per_gpu) < 1:
            raise ValueError(f"hydra.launcher.jobs_per_gpu={jobs_per_gpu} is invalid: it must be >= 1")
        self.jobs_per_gpu = int(jobs_per_gpu)  # small models leave a large GPU mostly idle
        self.detach = bool(detach)  # the sweeper runs this driver in the background (sweeper.background)
        self.gpus = [str(g) for g in gpus] if gpus is not None else None
        self.max_parallel = max_parallel
        self.threads_per_job = threads_per_job

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state) -> JobReturn:
        # In the worker: what submitit's launcher does, without a submitit job environment.
        from hydra.core.utils import run_job, setup_globals
        from omegaconf import open_dict

        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.id = job_id
            sweep_config.hydra.job.num = job_num
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                       job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")

    def preflight(self) -> None:
        """A job on N GPUs needs N GPUs in its slot: every slot gets the same number, so a sweep
        with GPUs runs one number of ranks (``train.gpus``), at most the GPUs it is given."""
        ranks = requested_ranks(self.config)
        gpus = self.gpus if self.gpus is not None else visible_gpus()
        if not gpus or ranks == [1]:
            return
        if len(ranks) > 1:
            raise PreflightError(f"train.gpus takes several values ({', '.join(map(str, ranks))}) in this "
                                 "launcher=local_parallel sweep: its slots all hold the same number of GPUs; run "
                                 "one sweep per value")
        if ranks[0] > len(gpus):
            raise PreflightError(f"train.gpus={ranks[0]} but launcher=local_parallel has {len(gpus)} GPU(s) to "
                                 f"hand out ({','.join(gpus)}; hydra.launcher.gpus or CUDA_VISIBLE_DEVICES): "
                                 f"allowed: 1..{len(gpus)}")

    def plan(self) -> tuple[int, list[str], int]:
        """(cap on concurrent jobs, GPUs to hand out: one entry per slot's GPUs, CPU threads per job).
        Jobs on N GPUs (``train.gpus``): each slot holds N of them ("0,1"), its job's ranks."""
        gpus = self.gpus if self.gpus is not None else visible_gpus()
        n = max(requested_ranks(self.config)) if self.config is not None else 1
        if n > 1 and gpus:
            gpus = [",".join(gpus[k:k + n]) for k in range(0, len(gpus) - n + 1, n)]
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        cap = self.max_parallel or (len(gpus) * self.jobs_per_gpu if gpus else max(1, cpus // 2))
        if cap < 1:
            raise ValueError(f"hydra.launcher.max_parallel={self.max_parallel} is invalid: it must be >= 1")
        threads = self.threads_per_job or max(1, cpus // cap)
        return cap, gpus, threads

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return [r for rets in self.launch_groups([[o] for o in job_overrides], initial_job_idx) for r in rets]

    def launch_groups(self, groups: Sequence[Sequence[Sequence[str]]], initial_job_idx: int) -> list[list[JobReturn]]:
        """Each group (a job alone, or a fused group) on the next free slot; its jobs' returns."""
        job_overrides = [o for g in groups for o in g]
        cap, gpus, threads = self.plan()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        logs = sweep_dir / ".workers"
        logs.mkdir(parents=True, exist_ok=True)
        log.info("local_parallel: %d jobs, at most %d at once, GPUs %s, %d CPU threads each (worker logs: %s)",
                 len(job_overrides), cap, ",".join(gpus) or "none", threads, logs)
        slots = WorkerSlots(gpus, threads, logs)
        starts = [sum(len(g) for g in groups[:k]) for k in range(len(groups))]
        pending = deque(zip(starts, groups))
        results: list[JobReturn | None] = [None] * len(job_overrides)
        try:
            for slot in range(min(cap, len(groups))):
                slots.start(slot)
            while pending or slots.busy:
                for slot in slots.idle():
                    if not pending:
                        break
                    first, group = pending.popleft()
                    indices = list(range(first, first + len(group)))
                    nums = [initial_job_idx + i for i in indices]
                    if len(group) == 1:
                        task = (self, (list(group[0]), "hydra.sweep.dir", nums[0], f"{os.getpid()}_{nums[0]}",
                                       Singleton.get_state()))
                    else:
                        task = (run_group_task, (self, [list(o) for o in group], nums, Singleton.get_state()))
                    slots.send(slot, indices, list(group), task)
                    for n, overrides in zip(nums, group):
                        log.info("\t#%d started (slot %d, GPU %s%s): %s", n, slot, slots.gpu_of(slot),
                                 f", fused group of {len(group)}" if len(group) > 1 else "",
                                 " ".join(filter_overrides(overrides)))
                for i, ret in slots.ended(more_jobs=bool(pending)):
                    results[i] = ret
                    status = "done" if ret.status == JobStatus.COMPLETED else "FAILED"
                    log.info("\t#%d %s", initial_job_idx + i, status)
                    if getattr(self, "progress", None) is not None:
                        self.progress.report(force=True)
        except KeyboardInterrupt:
            slots.stop_jobs()
            raise
        finally:
            slots.close()
        return [results[first:first + len(group)] for first, group in zip(starts, groups)]


class SlurmLauncher(BaseSubmititLauncher):
    """submitit's SLURM job array, with every job's outcome collected and CPU threads set.

    ``jobs_per_task`` > 1 packs that many grid jobs into each array task, run one after the
    other in one process: the per-process start-up (Python, torch, wandb's service: ~3-4 s)
    is paid once per task instead of once per job, which matters for many short jobs. A
    requeued task skips its finished jobs and resumes the interrupted one."""

    _EXECUTOR = "slurm"

    def __init__(self, jobs_per_task: int = 1, queue_poll_s: float = 60.0, detach: bool = False,
                 fuse: Any = "auto", **params: Any) -> None:
        super().__init__(**params)
        self.fuse = fuse  # fused groups (sweeper.fusion): a group is one array task
        if int(jobs_per_task) < 1:
            raise ValueError(f"hydra.launcher.jobs_per_task={jobs_per_task} is invalid: it must be >= 1")
        self.jobs_per_task = int(jobs_per_task)
        self.queue_poll_s = float(queue_poll_s)
        self.detach = bool(detach)

    def preflight(self) -> None:
        """Before anything is submitted: a task must fit on a node of its partition (``sinfo``),
        also a job's N tasks (``train.gpus=N``); raises ``sweeper.preflight.PreflightError``."""
        check_slurm_request(self.params)
        for n in requested_ranks(self.config):
            if n > 1:
                try:
                    check_slurm_request(rank_params(self.params, n))
                except PreflightError as e:
                    raise PreflightError(f"train.gpus={n} (one task per rank, on one node): {e}") from None

    def __call__(self, pack: list[tuple], fused: bool = False, ranks: int = 1) -> list[JobReturn]:
        use_threads(self.params.get("cpus_per_task"))
        if ranks > 1:  # one job on several tasks: task 0 runs it, the others are its helper ranks
            import submitit

            from sweeper.ranks import serve_slurm, slurm_task

            env = submitit.JobEnvironment()
            (job_args,) = pack
            with slurm_task(env) as leader:
                if not leader:
                    serve_slurm(env)
                    return []
                return [super().__call__(*job_args)]
        if fused:  # one fused group: its jobs train together in this task
            return run_group_task(self, [list(a[0]) for a in pack], [a[2] for a in pack], pack[0][4])
        returns = []
        for job_args in pack:  # (zero-argument super: the class may arrive pickled by value)
            returns.append(super().__call__(*job_args))
        return returns

    def launch_groups(self, groups: Sequence[Sequence[Sequence[str]]], initial_job_idx: int) -> list[list[JobReturn]]:
        """``launch`` with fused groups: each group of several jobs is one array task."""
        job_overrides = [o for g in groups for o in g]
        starts = [sum(len(g) for g in groups[:k]) for k in range(len(groups))]
        flat = self.launch(job_overrides, initial_job_idx,
                           fused=[list(range(a, a + len(g))) for a, g in zip(starts, groups) if len(g) > 1])
        return [list(flat[a:a + len(g)]) for a, g in zip(starts, groups)]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
               fused: Sequence[Sequence[int]] = ()) -> Sequence[JobReturn]:
        """Submit the jobs that are not already queued or running on the cluster (a driver that was
        stopped, or detached, left them there: ``live_tasks`` asks squeue and sacct), then wait for
        all of them; with ``detach`` return at once and let ``python -m sweeper.status`` follow."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        live = live_tasks(sweep_dir)
        keys = [job_key(result_overrides(o)) for o in job_overrides]
        queued = {i: live[k][0] for i, k in enumerate(keys) if k in live}
        if queued:
            log.info("slurm: %d of %d jobs are already queued or running on the cluster (%s): not submitted again",
                     len(queued), len(keys), ", ".join(sorted({live[keys[i]][0] for i in queued})))
        todo = [i for i in range(len(job_overrides)) if i not in queued]
        ranks_of = JobRanks(self)
        ranks = {i: ranks_of(job_overrides[i]) for i in todo}
        tasks, packs = [], []
        for n in sorted(set(ranks.values())):  # one job array per number of ranks (its tasks per array task)
            some = [i for i in todo if ranks[i] == n]
            t, p = self._submit(sweep_dir, [(i, job_overrides[i]) for i in some], initial_job_idx,
                                [[i for i in g if i not in queued and ranks.get(i) == n] for g in fused], ranks=n)
            tasks, packs = tasks + t, packs + p
        if self.detach:
            log.info("slurm: detached; the jobs run without this process. Follow them with `python -m "
                     "sweeper.status %s`; run the same command again to wait for them or resubmit failed ones",
                     sweep_dir)
            return [JobReturn(overrides=list(o), status=JobStatus.UNKNOWN) for o in job_overrides]
        results: dict[int, JobReturn] = {}
        with QueueWatch([t.job_id for t in tasks] + sorted(set(queued.values())), slurm_request(self.params),
                        self.queue_poll_s, progress=getattr(self, "progress", None)):
            for task, pack in zip(tasks, packs):
                overrides = [job_overrides[i] for i in pack]
                try:
                    returns = wait_for_result(task)
                except Exception:  # the task died: every job of it without a result is failed
                    returns = collect(task, overrides)
                results.update(zip(pack, returns))
            for i, task in queued.items():
                results[i] = wait_for_queued(task, job_overrides[i], sweep_dir, self.queue_poll_s)
        return [results[i] for i in range(len(job_overrides))]

    def _submit(self, sweep_dir: Path, jobs: list[tuple[int, Sequence[str]]], initial_job_idx: int,
                fused: Sequence[Sequence[int]] = (), ranks: int = 1):
        """One job array for ``jobs`` ((index, overrides) pairs): each of the ``fused`` groups (job
        indices) one task, the other jobs ``jobs_per_task`` per task: (the tasks, the job indices
        of each). Jobs on ``ranks`` > 1 ranks: one job per array task of ``ranks`` SLURM tasks."""
        if not jobs:
            return [], []
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        params = rank_params(self.params, ranks)
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                      if k not in init_keys})
        args = {i: (list(o), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
                    Singleton.get_state()) for i, o in jobs}
        groups = [list(g) for g in fused if len(g) > 1]
        alone = [i for i, _ in jobs if not any(i in g for g in groups)]
        k = self.jobs_per_task if ranks == 1 else 1
        index_packs = groups + [alone[n:n + k] for n in range(0, len(alone), k)]
        packs = [[args[i] for i in pack] for pack in index_packs]
        tasks = executor.map_array(self, packs, [True] * len(groups) + [False] * (len(index_packs) - len(groups)),
                                   [ranks] * len(index_packs))
        log.info("slurm: submitted %d jobs as array %s (%d tasks%s%s)", len(args),
                 tasks[0].job_id.split("_")[0] if tasks else "-", len(tasks),
                 f"; {len(groups)} fused groups" if groups else "",
                 f"; each a job on {ranks} ranks, {ranks} SLURM tasks" if ranks > 1 else "")
        # for `python -m sweeper.status` and the next driver: which task runs each job
        record_slurm_tasks(sweep_dir, {job_key(result_overrides(job_args[0])): task.job_id
                                       for task, pack in zip(tasks, packs) for job_args in pack},
                           slurm_request(params))
        return tasks, index_packs


def wait_for_queued(task: str, overrides: Sequence[str], sweep_dir: Path, poll_s: float) -> JobReturn:
    """The outcome of a job whose task an earlier driver submitted: wait while the cluster says the
    task is not over, then read what the job left in its folder."""
    poll_s = min(poll_s, 10.0)
    while True:
        state = cluster_states([task]).get(task, ("UNKNOWN", ""))[0]
        if state not in NOT_OVER or state == "UNKNOWN":
            break
        time.sleep(poll_s)
    key = job_key(result_overrides(overrides))
    names = [j["name"] for j in (read_json(sweep_dir / MANIFEST) or {}).get("jobs", []) if job_key(j["overrides"]) == key]
    job_dir = sweep_dir / names[0] if names else None
    # complete results are a finished job even if its wandb run is not (the next run completes that)
    if job_dir is not None and read_results(job_dir) is not None:
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    reason = (read_json(job_dir / STATUS) or {}).get("reason") if job_dir is not None else None
    return failed_return(overrides, RuntimeError(f"slurm task {task} ended {state} without a result"
                                                 + (f": {reason}" if reason else "")))


def state_word(state) -> str:
    """The state itself out of a sacct State, e.g. "CANCELLED" out of "CANCELLED by 0"."""
    return str(state).split()[0].upper()


def final_state(job, wait_s: float = 30.0, poll_s: float = 1.0) -> str:
    """The job's state from a fresh sacct call. ``job.state`` can be a minute old (submitit
    caches sacct), and accounting records a job's end a moment after its process is gone:
    poll until the state is final, for at most ``wait_s``. UNKNOWN (no record: accounting lost
    the job, which ``wait_for_result`` has already waited out) is returned at once."""
    deadline = time.monotonic() + wait_s
    while True:
        state = job.get_info(mode="force").get("State") or "UNKNOWN"
        if state_word(state) not in NOT_OVER - {"UNKNOWN"} or time.monotonic() > deadline:
            return state
        time.sleep(poll_s)


# sacct states no requeue passes through: the task is over, at once
ENDS_FOR_GOOD = {"CANCELLED", "OUT_OF_MEMORY", "DEADLINE", "BOOT_FAIL"}


def back_in_queue(task, grace_s: float = 30.0, poll_s: float = 2.0) -> bool:
    """Whether a task that looks over without a result is in fact being requeued. Between the
    ``scontrol requeue`` of a preempted attempt and the requeued one, sacct can report the old
    attempt as over (FAILED, COMPLETED...) for a few seconds: ask it afresh for ``grace_s``.
    True as soon as the task is queued or running again, or its result file is there."""
    deadline = time.monotonic() + grace_s
    while True:
        if task.paths.result_pickle.exists():
            return True
        state = state_word(task.get_info(mode="force").get("State") or "UNKNOWN")
        if state in NOT_OVER - {"UNKNOWN"}:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)


def wait_for_result(task, poll_s: float = 5.0, patience_s: float = 600.0, grace_s: float = 30.0):
    """``task.result()``, but submitit can give up on a job that is only being requeued (its
    result file is missing while sacct briefly reports the requeue, even as a final state):
    keep waiting while SLURM says the job is not over, or is again within ``grace_s``."""
    import submitit

    deadline = None
    while True:
        try:
            return task.results()[0]
        except submitit.core.utils.UncompletedJobError:
            state = state_word(task.state)
            if state not in NOT_OVER:
                # a cancel or the memory limit is what it says; the grace is for a requeue's flicker
                if state in ENDS_FOR_GOOD or not back_in_queue(task, grace_s):
                    raise
                log.info("slurm: task %s looked %s without a result, but is back in the queue: waiting",
                         task.job_id, state)
                continue
            # UNKNOWN can also mean accounting lost the job: do not wait for ever
            deadline = deadline or (time.monotonic() + patience_s if state == "UNKNOWN" else None)
            if deadline and time.monotonic() > deadline:
                raise
            log.info("slurm: task %s is %s, not finished: waiting", task.job_id, state)
            time.sleep(poll_s)
