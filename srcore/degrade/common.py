"""Image operations shared by the training degradations: 8-bit quantisation, bicubic
downsampling and aligned (paired) HR / LR crops."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def paired_random_crop(hr: torch.Tensor, lr: torch.Tensor, gt_patch: int | None, scale: int,
                       g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut aligned patches (HR ``gt_patch``, LR ``gt_patch // scale``) at a random place per sample."""
    lr_patch = None if gt_patch is None else gt_patch // scale
    h, w = lr.shape[-2:]
    if lr_patch is None or (h == lr_patch and w == lr_patch):
        return hr, lr
    if h < lr_patch or w < lr_patch:
        raise ValueError(f"LR {h}x{w} is smaller than the LR patch {lr_patch}")
    n = lr.shape[0]
    tops = torch.randint(0, h - lr_patch + 1, (n,), generator=g, device=g.device).tolist()
    lefts = torch.randint(0, w - lr_patch + 1, (n,), generator=g, device=g.device).tolist()
    return crop_pairs(hr, lr, tops, lefts, lr_patch, scale)
