"""Compose a job config from overrides exactly as ``python -m sweeper`` does, outside a run:
for ``sweeper.baseline``, ``sweeper.preview``, the pre-flight of every grid point and the tests."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

import sweeper.naming  # noqa: F401  (registers the resolvers the config uses)

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False,
            config_dir: str | Path = CONF_DIR) -> DictConfig:
    """The primary config (``<config_dir>/config.yaml``, by default the project's ``conf/``)
    with ``overrides`` applied."""
    with initialize_config_dir(config_dir=str(Path(config_dir).absolute()), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
