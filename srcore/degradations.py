"""Training degradations: HR batch -> LR batch, on the training device.

Each degradation is a callable ``(hr, generator) -> (hr_target, lr)`` on float batches
(N, 3, H, W) in [0, 1]; ``hr_target`` is what the network is trained to produce (the
input HR, or e.g. its sharpened and cropped version). Every random draw comes from the
given ``torch.Generator``, so a job that restores the generator's state continues the
same stream. LR images are clamped to [0, 1] and rounded to 8-bit levels, like the
images a model sees at test time.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from srcore.kernels import filter2d

DEGRADATIONS = ("realesrgan", "bicubic", "multi")


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8-bit levels."""
    return (x.clamp(0, 1) * 255).round() / 255


def bicubic_down(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downsampling (what Pillow's BICUBIC resize does)."""
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)


def gaussian_kernels(sigma: torch.Tensor, size: int = 21) -> torch.Tensor:
    """One normalised isotropic Gaussian kernel per sigma: (N, size, size)."""
    r = torch.arange(size, device=sigma.device, dtype=torch.float32) - size // 2
    g = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    g = g / g.sum(dim=1, keepdim=True)
    return g[:, :, None] * g[:, None, :]


def jpeg_per_sample(x: torch.Tensor, qualities: Sequence[int | None]) -> torch.Tensor:
    """Real JPEG (Pillow's codec) on the samples that have a quality; others pass through."""
    out = x.clone()
    for i, q in enumerate(qualities):
        if q is None:
            continue
        arr = (x[i].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(q))
        dec = np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        out[i] = torch.from_numpy(dec).to(x.device).permute(2, 0, 1).to(x.dtype) / 255
    return out


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


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)


class Bicubic:
    """The single-degradation control: bicubic x scale."""

    def __init__(self, scale: int, gt_patch: int | None = None):
        self.scale, self.gt_patch = scale, gt_patch

    def __call__(self, hr: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return paired_random_crop(hr, quantize(bicubic_down(hr, self.scale)), self.gt_patch, self.scale, g)


class SimpleMulti:
    """Blur -> bicubic -> Gaussian noise -> JPEG, each applied per sample with a probability
    and a strength drawn uniformly from its range."""

    def __init__(self, scale: int, blur_prob: float, blur_sigma: Sequence[float], noise_prob: float,
                 noise_sigma: Sequence[float], jpeg_prob: float, jpeg_quality: Sequence[int],
                 gt_patch: int | None = None):
        self.scale, self.gt_patch = scale, gt_patch
        self.blur_prob, self.blur_sigma = blur_prob, tuple(blur_sigma)
        self.noise_prob, self.noise_sigma = noise_prob, tuple(noise_sigma)
        self.jpeg_prob, self.jpeg_quality = jpeg_prob, tuple(jpeg_quality)

    def __call__(self, hr: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = hr.shape[0]
        # Draw every parameter up front, whether used or not, so the stream's length per
        # batch is fixed: a change of probabilities does not shift later draws.
        blur_on = torch.rand(n, generator=g, device=g.device) < self.blur_prob
        sigma = _uniform(n, *self.blur_sigma, g)
        noise_on = torch.rand(n, generator=g, device=g.device) < self.noise_prob
        noise_sigma = _uniform(n, *self.noise_sigma, g) / 255
        jpeg_on = torch.rand(n, generator=g, device=g.device) < self.jpeg_prob
        quality = torch.randint(self.jpeg_quality[0], self.jpeg_quality[1] + 1, (n,), generator=g, device=g.device)

        x = hr
        if blur_on.any():
            blurred = filter2d(x, gaussian_kernels(sigma.to(x.device)))
            x = torch.where(blur_on.to(x.device)[:, None, None, None], blurred, x)
        x = bicubic_down(x, self.scale)
        noise = torch.randn(x.shape, generator=g, device=g.device).to(x.device)
        scale = (noise_sigma * noise_on).to(x.device)[:, None, None, None]
        x = quantize(x + noise * scale)
        if jpeg_on.any():
            x = jpeg_per_sample(x, [int(q) if on else None for q, on in zip(quality.tolist(), jpeg_on.tolist())])
        return paired_random_crop(hr, quantize(x), self.gt_patch, self.scale, g)


def build_degradation(name: str, scale: int, gt_patch: int | None = None, **params):
    """A training degradation by name; unknown names fail with the allowed ones.

    ``gt_patch`` is the HR training patch size; pipelines that degrade larger crops
    (realesrgan) cut paired patches of that size afterwards.
    """
    if name == "realesrgan":
        from srcore.realesrgan import RealESRGANDegradation
        return RealESRGANDegradation(scale=scale, gt_patch=gt_patch, **params)
    if name == "bicubic":
        return Bicubic(scale, gt_patch)
    if name == "multi":
        return SimpleMulti(scale, gt_patch=gt_patch, **params)
    raise ValueError(f"degradation={name!r} is unknown; allowed: {', '.join(DEGRADATIONS)}")


def check_ranges(params: dict) -> None:
    """Validate probability and range parameters (pre-flight)."""
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
