"""Training degradations: HR batch -> (HR target, LR) batch, on the training device.

Only what training uses lives here; the paper's fixed TEST degradations are
``srcore.evaluation.paper``. Every entry is a ``Degradation`` (``srcore.degrade.base``: the
contract, ``(hr, g, crop=None) -> (hr_target, lr)``, ``views`` for several degraded views
sharing one crop, ``prepare_images``, ``validate``), registered below by
the name its config file ``conf/degradation/<name>.yaml`` carries. The job builds one with
``build_degradation(name, scale, gt_patch, **params)``, where ``params`` are that file's keys
other than ``name`` and ``gt_size``; pre-flight calls ``validate_degradation`` with the same
keys plus ``scale`` and ``gt_patch``.

Adding a degradation: one module with a ``Degradation`` subclass, one config file, one line in
``DEGRADATIONS``.
"""
from __future__ import annotations

from srcore.degrade.base import Degradation
from srcore.degrade.bicubic import Bicubic
from srcore.degrade.multi import SimpleMulti
from srcore.degrade.realesrgan import RealESRGANDegradation

DEGRADATIONS: dict[str, type[Degradation]] = {
    "realesrgan": RealESRGANDegradation,
    "bicubic": Bicubic,
    "multi": SimpleMulti,
}


def _lookup(name: str) -> type[Degradation]:
    if name not in DEGRADATIONS:
        raise ValueError(f"degradation={name!r} is unknown; allowed: {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[name]


def build_degradation(name: str, scale: int, gt_patch: int | None = None, **params) -> Degradation:
    """A training degradation by name; unknown names fail with the allowed ones.

    ``gt_patch`` is the HR training patch size; pipelines that degrade larger crops
    (realesrgan) cut paired patches of that size afterwards.
    """
    return _lookup(name)(scale, gt_patch, **params)


def validate_degradation(name: str, params: dict) -> None:
    """Pre-flight check of a degradation's name and parameters (its config keys other than
    ``name`` and ``gt_size``, plus ``scale`` and ``gt_patch``); raises ValueError naming the
    offending key and value and what is allowed."""
    _lookup(name).validate(params)
