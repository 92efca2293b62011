"""The Hydra app: one call = one job (Hydra's sweeper and launcher run the grid)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import sweeper.naming as naming
from srcore.models.checkpoint import CheckpointError
from sweeper.compose import CONF_DIR
from sweeper.job import run_job
from sweeper.jobstate import is_done
from sweeper.preflight import PreflightError, validate_config


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> dict | None:
    hc = HydraConfig.get()
    job_overrides = naming.result_overrides(hc.overrides.task)
    try:
        if hc.mode == RunMode.RUN and hc.sweeper.get("dry_run"):  # Hydra calls no sweeper without -m
            return _dry_run(cfg, Path(hc.runtime.output_dir))
        return run_job(cfg, Path(hc.runtime.output_dir), naming.job_dirname(hc.overrides.task), tags=job_overrides)
    except (PreflightError, CheckpointError) as e:  # a user error: say what is wrong, without a traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _dry_run(cfg: DictConfig, job_dir: Path) -> None:
    """``hydra.sweeper.dry_run=true`` on one job: validate it and say whether it is done, as a
    grid's dry run does for each of its jobs; nothing trained."""
    validate_config(cfg)
    state = "done" if is_done(job_dir) else "to run"
    print(f"dry run: 1 job in {job_dir} ({state}); nothing run (a grid: add -m)")
