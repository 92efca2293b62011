"""Image operations shared by the training degradations: 8-bit quantisation, bicubic
downsampling and aligned (paired) HR / LR crops."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Crop(NamedTuple):
    """Where each sample's LR patch is cut (its HR patch sits ``scale`` times further): drawn once
    per batch of GT patches, so that several degraded views of them can share it."""

    tops: list[int]
    lefts: list[int]


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8-bit levels."""
    return (x.clamp(0, 1) * 255).round() / 255


def bicubic_down(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downsampling (what Pillow's BICUBIC resize does)."""
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)


def crop_pairs(hr: torch.Tensor, lr: torch.Tensor, tops: list[int], lefts: list[int], lr_patch: int,
               scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut aligned patches per sample: LR ``[t:t+p, l:l+p]`` and the HR region ``scale`` times it."""
    lr_out = torch.stack([lr[i, :, t:t + lr_patch, l:l + lr_patch] for i, (t, l) in enumerate(zip(tops, lefts))])
    hr_out = torch.stack([hr[i, :, t * scale:(t + lr_patch) * scale, l * scale:(l + lr_patch) * scale]
                          for i, (t, l) in enumerate(zip(tops, lefts))])
    return hr_out, lr_out


def draw_crop(n: int, lr_size: tuple[int, int], gt_patch: int | None, scale: int,
              g: torch.Generator) -> Crop | None:
    """A random place per sample for the LR patch (``gt_patch // scale``) in LR images of
    ``lr_size``; None (and nothing drawn) when there is nothing to cut."""
    lr_patch = None if gt_patch is None else gt_patch // scale
    h, w = lr_size
    if lr_patch is None or (h == lr_patch and w == lr_patch):
        return None
    if h < lr_patch or w < lr_patch:
        raise ValueError(f"LR {h}x{w} is smaller than the LR patch {lr_patch}")
    tops = torch.randint(0, h - lr_patch + 1, (n,), generator=g, device=g.device).tolist()
    lefts = torch.randint(0, w - lr_patch + 1, (n,), generator=g, device=g.device).tolist()
    return Crop(tops, lefts)


def paired_random_crop(hr: torch.Tensor, lr: torch.Tensor, gt_patch: int | None, scale: int,
                       g: torch.Generator, crop: Crop | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut aligned patches (HR ``gt_patch``, LR ``gt_patch // scale``) at ``crop``, or, without
    one, at a random place per sample drawn from ``g``."""
    if crop is None:
        crop = draw_crop(lr.shape[0], lr.shape[-2:], gt_patch, scale, g)
    if crop is None:
        return hr, lr
    return crop_pairs(hr, lr, crop.tops, crop.lefts, gt_patch // scale, scale)


def noise_generator(device: torch.device, seed: int) -> torch.Generator:
    """The private generator of a batch's noise realisations, on the images' device (the
    degradation's own generator stays on the host: it draws the seed)."""
    return torch.Generator(device=device).manual_seed(seed)
