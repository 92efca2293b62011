"""Bicubic interpolation as a parameter-free "model": the reference row of SR tables.

It upsamples with Pillow's ``Image.BICUBIC`` (Keys a = -0.5, as MATLAB's ``imresize``), so
under the test protocol it shows what the test degradations leave when nothing is learnt:
a trained model that scores below it on a column has learnt to make that input worse.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn


class BicubicInterpolation(nn.Module):
    """``(N, 3, h, w)`` in ``[0, 1]`` -> ``(N, 3, h*scale, w*scale)``, Pillow bicubic on 8-bit levels.

    The input is rounded to 8-bit levels first; test LR images already are, so for them the
    output is exactly Pillow's resize of the LR image.
    """

    def __init__(self, scale: int = 4):
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, h, w) batch, got shape {tuple(x.shape)}")
        levels = (x.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        h, w = levels.shape[1:3]
        up = [np.asarray(Image.fromarray(img).resize((w * self.scale, h * self.scale), Image.BICUBIC))
              for img in levels]
        return torch.from_numpy(np.stack(up)).permute(0, 3, 1, 2).to(x.device, torch.float32) / 255
