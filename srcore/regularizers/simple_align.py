"""Simple Align (Zhang et al., CVPR 2024, arXiv 2402.18929; the official code
Dreamzz5/Simple-Align, ../shared/REGULARIZERS.md §2): align the features of two differently
degraded views of the same GT patch.

The training loop degrades every GT patch twice (``views`` = 2: independent draws of every
random choice, one shared crop; the batch is [view 1 (B); view 2 (B)], GT repeated). The
aligned feature is the input of conv_last (site ``last``), global-average-pooled to
f ∈ R^C per sample; u_i, v_i are pair i's pooled features, each centred by the mean over
the B samples of its own view. Per pair

    reg(u, v) = mean_c (u_c − v_c)² + mean_{c,d} (u_c·u_d − v_c·v_d)²

(per-sample outer products, not a batch covariance), and the loss term is

    λ · Σ_i [reg(u_i, v_i) + reg(φ(u_i), φ(v_i))]          (summed over pairs, λ = 1)

with random Fourier features φ, drawn anew for every pair and iteration, the same draw for
u_i and v_i: z_c = w·u_c + b_c (w ~ N(0, 1), one scalar; b ~ U[0, 2π)^C),
z̃ = (π/2)·(z − min z) / max(z − min z), φ_c = √2·(cos z̃_c + sin z̃_c). w and b come from
torch's global RNG on the features' device, whose state the checkpoint keeps, so a resumed
job draws what the uninterrupted one would have. Gradients flow through both views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import Regularizer, check_real, register_regularizer


def alignment(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``reg(u_i, v_i)`` for each row i of (B, C) features: the (B,) first- and second-order gaps."""
    mean_gap = (u - v).pow(2).mean(1)
    outer_gap = (u[:, :, None] * u[:, None, :] - v[:, :, None] * v[:, None, :]).pow(2).mean((1, 2))
    return mean_gap + outer_gap


def fourier_features(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """φ(x) per row of (B, C) ``x``, with one weight per row (``w``: (B, 1)) and offsets ``b`` (B, C)."""
    z = w * x + b
    z = z - z.amin(1, keepdim=True)
    z = z / z.amax(1, keepdim=True) * (math.pi / 2)  # each sample's z rescaled to [0, π/2]
    return math.sqrt(2.0) * (torch.cos(z) + torch.sin(z))


@register_regularizer
class SimpleAlign(Regularizer):
    """``{"name": "simple_align", "lam": 1.0}``."""

    name = "simple_align"
    views = 2
    tapped_sites = ("last",)
    draws_in_loss = True  # the random Fourier features

    def __init__(self, lam: float):
        super().__init__()
        self.lam = check_real(self.name, "lam", lam, 0, math.inf)

    def settings(self) -> dict:
        return {"lam": self.lam}

    def resolve(self, sites: Sequence[str]) -> frozenset[str]:
        if "last" not in sites:
            raise ValueError(f"regularizers.{self.name} aligns the input of conv_last (site 'last'); this network's "
                             f"sites are {', '.join(sites)}")
        return frozenset()  # taps a site, puts no module there

    def extra_loss(self, sr: torch.Tensor, hr: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = features["last"].mean((2, 3))
        u, v = pooled.chunk(2)  # view 1, view 2 of the same GT patches
        u, v = u - u.mean(0, keepdim=True), v - v.mean(0, keepdim=True)
        w = torch.randn(u.shape[0], 1, device=u.device, dtype=u.dtype)
        b = 2 * math.pi * torch.rand(u.shape, device=u.device, dtype=u.dtype)
        aligned = alignment(u, v) + alignment(fourier_features(u, w, b), fourier_features(v, w, b))
        return self.lam * aligned.sum()
