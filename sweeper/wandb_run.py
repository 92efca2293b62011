"""A job's wandb run: its own service, started early; logging that survives a lost service;
the final metrics as tables on the run's page.

Offline by default (``logger.mode``); the run id is derived from the sweep and job names, so a
rerun or a requeue resumes the same run.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweeper.naming import run_id

log = logging.getLogger(__name__)


def own_wandb_service() -> None:
    """Make this job start its own wandb service. wandb exports its service's address
    (WANDB_SERVICE) to child processes, so a job launched by any process that used wandb
    (a notebook, a test session, analysis.interpret) would log through that parent's
    service; a killed job's run then stays registered there, and the rerun is refused
    with "run ID ... is in use". The token names the pid that started the service."""
    token = os.environ.get("WANDB_SERVICE")
    if token and token.split("-")[1:2] != [str(os.getpid())]:
        os.environ.pop("WANDB_SERVICE")


def start_service(cfg: DictConfig) -> threading.Thread | None:
    """Start wandb's service process while the job loads its data and builds its model:
    ~0.5-1 s of every job process's start-up otherwise, spent waiting for that process.
    ``JobRun`` joins the thread before ``wandb.init``, so the two never overlap."""
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # offline must not even look up DNS
    os.environ.setdefault("WANDB_SILENT", "true")
    own_wandb_service()
    if cfg.logger.mode == "disabled":
        return None

    def setup() -> None:
        try:
            import wandb
            wandb.setup()
        except Exception as e:  # noqa: BLE001 - wandb.init, which follows, reports any real problem
            log.debug("starting wandb's service early failed: %s", e)

    thread = threading.Thread(target=setup, name="wandb-service-start", daemon=True)
    thread.start()
    return thread


def metrics_tables(rows: list[dict], means: dict, seal: dict | None = None) -> dict:
    """The final metrics as wandb tables: per (set, degradation), per image, and SEAL's per case."""
    import wandb

    tables = {}
    if seal:
        columns = list(seal["cases"][0])
        tables["seal/cases"] = wandb.Table(columns=columns, data=[[c[k] for k in columns] for c in seal["cases"]])
    if not rows:
        return tables

    per_set: dict[tuple[str, str], dict] = {}
    for key, value in means.items():
        test_set, deg, name = key.split("/")
        per_set.setdefault((test_set, deg), {})[name] = value
    names = sorted({n for v in per_set.values() for n in v})
    columns = list(rows[0])
    return {**tables,
            "test/metrics": wandb.Table(columns=["set", "degradation", *names],
                                        data=[[s, d, *(v.get(n) for n in names)] for (s, d), v in per_set.items()]),
            "test/per_image": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])}


class JobRun:
    """The job's wandb run. ``log`` never fails the job: a signal sent to the whole job step
    (scancel, preemption) also ends wandb's service process, and training must still reach
    its next iteration and save its state."""

    def __init__(self, cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str],
                 service_start: threading.Thread | None):
        if service_start is not None:
            service_start.join()
        import wandb

        self.job_name, self.lost = job_name, None
        self.run = wandb.init(
            project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode,
            group=cfg.sweep_name or "runs", job_type="train", name=job_name,
            tags=[t[:64] for t in tags], id=run_id(cfg.sweep_name, job_name), resume="allow",
            # "swept": the job's own overrides, so the dashboard's run table can group by them
            dir=str(job_dir), config={**OmegaConf.to_container(cfg, resolve=True),
                                      "swept": dict(t.split("=", 1) for t in tags if "=" in t)},
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        self.id = self.run.id

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.lost is not None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as e:  # noqa: BLE001
            self.lost = e
            log.warning("%s: wandb stopped logging (%s); training goes on", self.job_name, e)

    def log_results(self, rows: list[dict], means: dict, summary: dict, seal: dict | None = None) -> None:
        """The final metrics: ``summary`` into the run's summary, the tables onto its page."""
        self.summarize(summary)
        tables = metrics_tables(rows, means, seal)
        if tables:
            self.run.log(tables)

    def summarize(self, values: dict) -> None:
        self.run.summary.update(values)

    def finish(self, exit_code: int) -> bool:
        """Finish the run; False (with a warning) when wandb could not."""
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as e:  # a signal to the whole job step (scancel) may have ended wandb's service
            log.warning("%s: wandb could not finish the run: %s", self.job_name, e)
            return False
        return self.lost is None
