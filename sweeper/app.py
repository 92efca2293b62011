"""The Hydra app: one call = one job (Hydra's sweeper and launcher run the grid)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import sweeper.naming as naming
from srcore.models.checkpoint import CheckpointError
from sweeper.compose import CONF_DIR
from sweeper.job import run_job
from sweeper.preflight import PreflightError


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    job_overrides = naming.result_overrides(hc.overrides.task)
    try:
        return run_job(cfg, Path(hc.runtime.output_dir), naming.job_dirname(hc.overrides.task), tags=job_overrides)
    except (PreflightError, CheckpointError) as e:  # a user error: say what is wrong, without a traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
