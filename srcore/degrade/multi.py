"""A simple multi-degradation (conf/degradation/multi.yaml): blur -> bicubic -> Gaussian
noise -> JPEG, each switched on per sample."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from srcore.degrade.base import Degradation
from srcore.degrade.common import Crop, bicubic_down, noise_generator, paired_random_crop, quantize
from srcore.degrade.filtering import filter2d
from srcore.imageio import jpeg_roundtrip


def gaussian_kernels(sigma: torch.Tensor, size: int = 21) -> torch.Tensor:
    """One normalised isotropic Gaussian kernel per sigma: (N, size, size)."""
    r = torch.arange(size, device=sigma.device, dtype=torch.float32) - size // 2
    g = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    g = g / g.sum(dim=1, keepdim=True)
    return g[:, :, None] * g[:, None, :]


def jpeg_per_sample(x: torch.Tensor, qualities: Sequence[int | None]) -> torch.Tensor:
    """Real JPEG (``jpeg_roundtrip``) on the samples that have a quality; others pass through."""
    out = x.clone()
    for i, q in enumerate(qualities):
        if q is None:
            continue
        arr = (x[i].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        dec = jpeg_roundtrip(arr, int(q))
        out[i] = torch.from_numpy(dec).to(x.device).permute(2, 0, 1).to(x.dtype) / 255
    return out


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)


class SimpleMulti(Degradation):
    """Blur -> bicubic -> Gaussian noise -> JPEG, each applied per sample with a probability
    and a strength drawn uniformly from its range."""

    def __init__(self, scale: int, gt_patch: int | None = None, *, blur_prob: float, blur_sigma: Sequence[float],
                 noise_prob: float, noise_sigma: Sequence[float], jpeg_prob: float, jpeg_quality: Sequence[int]):
        super().__init__(scale, gt_patch)
        self.blur_prob, self.blur_sigma = blur_prob, tuple(blur_sigma)
        self.noise_prob, self.noise_sigma = noise_prob, tuple(noise_sigma)
        self.jpeg_prob, self.jpeg_quality = jpeg_prob, tuple(jpeg_quality)

    def __call__(self, hr: torch.Tensor, g: torch.Generator, crop: Crop | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
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
        if x.device.type == "cpu":
            noise = torch.randn(x.shape, generator=g, device=g.device)
        else:  # drawn where the images are, from a seed of the host generator: no LR-sized copy
            seed = int(torch.randint(0, 2**62, (1,), generator=g).item())
            noise = torch.randn(x.shape, generator=noise_generator(x.device, seed), device=x.device)
        scale = (noise_sigma * noise_on).to(x.device)[:, None, None, None]
        x = quantize(x + noise * scale)
        if jpeg_on.any():
            x = jpeg_per_sample(x, [int(q) if on else None for q, on in zip(quality.tolist(), jpeg_on.tolist())])
        return paired_random_crop(hr, quantize(x), self.gt_patch, self.scale, g, crop)
