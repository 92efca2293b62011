"""What every training degradation is: the ``Degradation`` base class and its default
pre-flight validation.

A degradation is a callable ``(hr, generator, crop=None) -> (hr_target, lr)`` on float batches
(N, 3, H, W) in [0, 1]; ``hr_target`` is what the network is trained to produce (the input HR,
or e.g. its sharpened and cropped version). Every random draw comes from the given
``torch.Generator``, so a job that restores the generator's state continues the same stream.
LR images are clamped to [0, 1] and rounded to 8-bit levels, like the images a model sees at
test time.

``crop`` (``srcore.degrade.common.Crop``) fixes where the paired patches are cut instead of
drawing it; ``views(hr, g, k)`` uses it to degrade each GT patch k times independently with
one shared crop (Simple Align's two views). With ``crop=None`` a degradation draws exactly
what it drew before views existed, so single-view jobs are unchanged.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from srcore.degrade.common import Crop, draw_crop


class Degradation:
    """Base of the training degradations: HR batch -> (HR target, LR) batch, on the training device.

    ``scale`` is the SR factor; ``gt_patch`` the HR training patch size: a degradation fed larger
    crops cuts paired patches of that size (and ``gt_patch // scale`` in the LR) afterwards
    (``None``: no crop).
    """

    def __init__(self, scale: int, gt_patch: int | None = None):
        self.scale, self.gt_patch = scale, gt_patch

    def __call__(self, hr: torch.Tensor, g: torch.Generator, crop: Crop | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def views(self, hr: torch.Tensor, g: torch.Generator, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` independently degraded LR views of each GT patch, all cut at one place per patch:
        ``(hr_target, lr)`` with the views stacked view-major along the batch (view 1 of every
        patch, then view 2, ...), ``hr_target`` likewise. ``k`` = 1 is ``self(hr, g)``."""
        if k == 1:
            return self(hr, g)
        h, w = hr.shape[-2:]  # every degradation's LR is (H // scale, W // scale) before the crop
        crop = draw_crop(hr.shape[0], (h // self.scale, w // self.scale), self.gt_patch, self.scale, g)
        pairs = [self(hr, g, crop) for _ in range(k)]
        return torch.cat([t for t, _ in pairs]), torch.cat([lr for _, lr in pairs])

    def many(self, hrs: Sequence[torch.Tensor], g: torch.Generator, views: int = 1
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Several batches in one call (a super-batch): ``[(hr_target, lr)]`` per batch, exactly
        ``srcore.train.degraded_views(self, hr, g, views)`` of each in turn -- the same draws
        from ``g`` in the same order, the same per-sample results. This default is that loop;
        a degradation overrides it where one call for all pays (fewer launches on a GPU)."""
        return [self(hr, g) if views == 1 else self.views(hr, g, views) for hr in hrs]

    def prepare_images(self, images: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
        """Work done once per training image (name, HxWx3 uint8) when the data is loaded, instead
        of once per batch; none by default."""
        return images

    @classmethod
    def validate(cls, params: dict) -> None:
        """Pre-flight check of the constructor's keyword arguments; raises ValueError naming the
        key and value. By default: ``check_ranges``."""
        check_ranges(params)


def check_ranges(params: dict) -> None:
    """Validate probability and range parameters (pre-flight): ``*_prob`` in [0, 1], every list a
    range [low, high], and the ranges of blur sigma, JPEG quality and noise sigma."""
    for key, value in params.items():
        if key.endswith("_prob") and not (0 <= float(value) <= 1):
            raise ValueError(f"degradation.{key}={value} must be in [0, 1]")
        if isinstance(value, Sequence) and not isinstance(value, str):
            if len(value) != 2 or float(value[0]) > float(value[1]):
                raise ValueError(f"degradation.{key}={list(value)} must be a range [low, high] with low <= high")
    if "blur_sigma" in params and float(params["blur_sigma"][0]) <= 0:
        raise ValueError(f"degradation.blur_sigma={list(params['blur_sigma'])} must be > 0")
    if "jpeg_quality" in params and not (1 <= int(params["jpeg_quality"][0]) and int(params["jpeg_quality"][1]) <= 100):
        raise ValueError(f"degradation.jpeg_quality={list(params['jpeg_quality'])} must lie within [1, 100]")
    if not math.isfinite(sum(float(v) for v in params.get("noise_sigma", [0, 0]))):
        raise ValueError("degradation.noise_sigma must be finite")
