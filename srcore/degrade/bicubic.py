"""The single-degradation control: bicubic downsampling (conf/degradation/bicubic.yaml)."""
from __future__ import annotations

import torch

from srcore.degrade.base import Degradation
from srcore.degrade.common import Crop, bicubic_down, paired_random_crop, quantize


class Bicubic(Degradation):
    """The single-degradation control: bicubic x scale."""

    def __call__(self, hr: torch.Tensor, g: torch.Generator, crop: Crop | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return paired_random_crop(hr, quantize(bicubic_down(hr, self.scale)), self.gt_patch, self.scale, g, crop)
