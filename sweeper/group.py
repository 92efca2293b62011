"""A fused group's jobs, each still a job (docs/cluster.md, "Fused groups").

``launch_group`` is what a launcher runs for a group of a grid's jobs in one process (in this
process, a local_parallel worker, or a SLURM array task): it gives every job what Hydra gives a
job (its folder, ``.hydra/``, its log file), then ``run_group`` trains the jobs that are not
finished together (``srcore.train_group``) and finishes each one as a job alone would: its
``status.json``, ``checkpoint.pt``, ``model.pt``, evaluation, ``results.json`` and wandb run.
A job that fails fails alone; a stop request saves every job, marks each interrupted and hands
over (requeue or exit) once.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, _save_config, configure_log
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

import sweeper.naming as naming
from srcore.evaluation.scoring import EvaluationStopped
from srcore.train import Interrupted
from srcore.train_group import GroupJob, train_group
from sweeper.job import (CHECKPOINT, JobSession, _build_job, finished_earlier, open_job, record_outcome, run_job)
from sweeper.job_folder import JobFolder
from sweeper.optuna_report import Pruned
from sweeper.preemption import StopRequest

log = logging.getLogger(__name__)


def launch_group(hydra_context, config: DictConfig, overrides: list[list[str]], job_nums: list[int]
                 ) -> list[JobReturn]:
    """Run a group of jobs (``overrides``, numbered ``job_nums``) in this process: one
    ``JobReturn`` per job, as Hydra's ``run_job`` gives for one."""
    jobs, returns = [], []
    for o, n in zip(overrides, job_nums):
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(o))
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.id = f"{os.getpid()}_{n}"
            sweep_config.hydra.job.num = n
        jobs.append(_job_setup(sweep_config))
    with _job_logs([j[0] for j in jobs]):
        outcomes = run_group([(task_cfg, Path(out), name, tags) for _, task_cfg, out, name, tags in jobs])
    for (sweep_config, task_cfg, out, _, _), outcome in zip(jobs, outcomes):
        ret = JobReturn(overrides=OmegaConf.to_container(sweep_config.hydra.overrides.task), cfg=task_cfg,
                        hydra_cfg=copy.deepcopy(sweep_config), working_dir=os.getcwd(), task_name="app")
        ret.return_value = outcome
        ret.status = JobStatus.FAILED if isinstance(outcome, BaseException) else JobStatus.COMPLETED
        returns.append(ret)
    return returns


def _job_setup(sweep_config: DictConfig):
    """What Hydra's ``run_job`` does for a job before calling it: its output folder and
    ``.hydra/`` files. (sweep config, task config, output folder, job name, tags)"""
    HydraConfig.instance().set_config(sweep_config)
    out = os.path.abspath(os.path.join(str(sweep_config.hydra.sweep.dir), str(sweep_config.hydra.sweep.subdir)))
    with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
        sweep_config.hydra.runtime.output_dir = out
    HydraConfig.instance().set_config(sweep_config)
    task_cfg = copy.deepcopy(sweep_config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    Path(out).mkdir(parents=True, exist_ok=True)
    if sweep_config.hydra.output_subdir is not None:
        hydra_output = Path(out) / str(sweep_config.hydra.output_subdir)
        _save_config(task_cfg, "config.yaml", hydra_output)
        _save_config(copy.deepcopy(HydraConfig.instance().cfg), "hydra.yaml", hydra_output)
        _save_config(sweep_config.hydra.overrides.task, "overrides.yaml", hydra_output)
    task = sweep_config.hydra.overrides.task
    return sweep_config, task_cfg, out, naming.job_dirname(task), naming.result_overrides(task)


@contextlib.contextmanager
def _job_logs(configs: list[DictConfig]):
    """Hydra's job logging, into every job's log file: a fused job's log holds its group's lines."""
    HydraConfig.instance().set_config(configs[0])
    configure_log(configs[0].hydra.job_logging, configs[0].hydra.verbose)
    root = logging.getLogger()
    template = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    added = []
    for cfg in configs[1:]:
        path = Path(str(cfg.hydra.runtime.output_dir)) / f"{cfg.hydra.job.name}.log"
        handler = logging.FileHandler(path)
        if template is not None:
            handler.setFormatter(template.formatter)
            handler.setLevel(template.level)
        root.addHandler(handler)
        added.append(handler)
    try:
        yield
    finally:
        for handler in added:
            root.removeHandler(handler)
            handler.close()


def run_group(jobs: list[tuple[DictConfig, Path, str, list[str]]]) -> list[dict | BaseException]:
    """Run jobs (config, folder, name, tags) together: per job its metrics, or the exception that
    ended it. Finished jobs are skipped; a lone unfinished job runs as a job alone."""
    outcomes: list[dict | BaseException | None] = [None] * len(jobs)
    todo = []
    for k, (cfg, job_dir, name, tags) in enumerate(jobs):
        try:
            done = finished_earlier(cfg, job_dir, name, tags)
        except Exception as e:  # noqa: BLE001 - a wandb repair that fails fails that job
            outcomes[k] = e
            continue
        if done is not None:
            outcomes[k] = done["metrics"]
        else:
            todo.append(k)
    if len(todo) == 1:
        k = todo[0]
        try:
            outcomes[k] = run_job(*jobs[k])
        except Exception as e:  # noqa: BLE001 - the job wrote down why
            outcomes[k] = e
    elif todo:
        for k, outcome in zip(todo, _train_together([jobs[k] for k in todo])):
            outcomes[k] = outcome
    return outcomes


def _train_together(jobs):
    outcomes: list = [None] * len(jobs)
    statuses = {}
    for k, (cfg, job_dir, name, tags) in enumerate(jobs):
        try:
            statuses[k] = open_job(cfg, job_dir, name, tags)
        except Exception as e:  # noqa: BLE001 - e.g. a config pre-flight refuses
            outcomes[k] = e
    with StopRequest() as stop, contextlib.ExitStack() as stack:
        sessions, shared = {}, {}
        for k in statuses:
            cfg, job_dir, name, tags = jobs[k]
            try:
                folder = stack.enter_context(JobFolder(job_dir))
                sessions[k] = JobSession(cfg, job_dir, name, tags, statuses[k], stop, folder,
                                         built=_build_job(cfg, shared), concurrent_run=True)
            except Exception as e:  # noqa: BLE001 - e.g. its data cannot be read: this job alone fails
                record_outcome(e, name, statuses[k], stop)
                outcomes[k] = e
                continue
            stack.callback(sessions[k].close)
        members = list(sessions)
        if not members:
            return outcomes
        log.info("fused group: %d jobs train together (%s)", len(members), ", ".join(jobs[k][2] for k in members))
        for k in members:
            sessions[k].progress.begin("train")
        t0 = time.perf_counter()
        try:
            finals = train_group([GroupJob(s.model, s.patches, s.degrade, s.settings, s.job_dir / CHECKPOINT,
                                           **s.callbacks()) for s in (sessions[k] for k in members)],
                                 should_stop=lambda: stop.requested)
        except BaseException as e:
            for k in members:
                record_outcome(e, jobs[k][2], statuses[k], stop)
            if isinstance(e, Interrupted):
                stop.hand_over()
            raise
        seconds = time.perf_counter() - t0
        stopped = None
        for k, final in zip(members, finals):
            session = sessions[k]
            try:
                if isinstance(final, Pruned):
                    outcomes[k] = session.pruned(final)
                    continue
                if isinstance(final, BaseException):
                    raise final
                outcomes[k] = session.finish(final, seconds)
            except EvaluationStopped as e:
                record_outcome(e, jobs[k][2], statuses[k], stop)
                outcomes[k], stopped = e, e
            except Exception as e:  # noqa: BLE001 - this job alone ends
                record_outcome(e, jobs[k][2], statuses[k], stop)
                outcomes[k] = e
        if stopped is not None:
            stack.close()
            stop.hand_over()
    return outcomes
