"""Hydra callbacks: checks a single run needs before Hydra itself touches the disk.

Hydra creates a run's output folder before the job starts, so an unwritable
``paths.output_root`` used to end in Hydra's traceback. ``OutputFolderCheck`` runs first
(registered under ``hydra.callbacks`` in ``conf/config.yaml``) and says it in one line. A
multirun's sweep folder is checked by the sweeper (``validating_sweeper``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweeper.preflight import PreflightError, check_output_folder


class OutputFolderCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_output_folder(Path(str(config.hydra.run.dir)))
        except PreflightError as e:  # a user error: one line, no traceback
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
