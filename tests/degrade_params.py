"""The paper's training-degradation settings, read from the config files (their only home),
for tests and benchmarks that build degradations without composing a Hydra config."""
from __future__ import annotations

from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parent.parent / "conf"


def _load(name: str) -> dict:
    with open(CONF / name) as f:
        return yaml.safe_load(f)


def paper_realesrgan_params() -> dict:
    """conf/degradation/realesrgan.yaml as ``build_degradation("realesrgan", ...)`` takes it:
    every key but ``name`` and ``gt_size``."""
    return {k: v for k, v in _load("degradation/realesrgan.yaml").items() if k not in ("name", "gt_size")}


def paper_geometry() -> dict:
    """The paper job's ``scale`` (conf/config.yaml) and HR training patch ``gt_patch``
    (train.patch_size of conf/train/paper.yaml, times scale), as a job passes them."""
    scale = _load("config.yaml")["scale"]
    return {"scale": scale, "gt_patch": _load("train/paper.yaml")["patch_size"] * scale}
