"""Hydra's basic grid sweeper with a pre-flight check.

Hydra only discovers plugins inside the ``hydra_plugins`` namespace, so this thin
class lives here; the checks themselves are ``sweeper.preflight``.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from sweeper.naming import result_overrides
from sweeper.preflight import PreflightError, validate_config

log = logging.getLogger(__name__)


class ValidatingSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        """Compose and validate every job's config; launch nothing if any is bad."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{k}={v}" for k, v in (self.params or {}).items()] + list(arguments)
        jobs = [job for batch in self.split_arguments(parser.parse_overrides(params), None) for job in batch]
        problems = []
        for overrides in jobs:
            job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            try:
                validate_config(job_cfg)
            except PreflightError as e:
                problems.append(f"job [{' '.join(result_overrides(overrides))}]: {e}")
        if problems:
            # A user error, not a crash: the message without a traceback, and a non-zero exit.
            print(f"error: {len(problems)} of {len(jobs)} jobs have invalid settings; nothing was launched.\n  "
                  + "\n  ".join(problems), file=sys.stderr)
            raise SystemExit(2)
        log.info("pre-flight: %d jobs validated", len(jobs))
        return super().sweep(arguments)
