"""Per-sample Gaussian / Poisson noise of the Real-ESRGAN pipeline (BasicSR's formulas).

Gaussian noise: std ``sigma / 255`` (sigma in levels), colour (independent channels) or grey
(the same on all channels). Grey Gaussian noise is drawn independently per sample (BasicSR's
batched version shares one grey pattern across the batch).

Poisson noise follows BasicSR's ``generate_poisson_noise_pt``: the image is rounded to 8-bit
levels, ``vals = 2 ** ceil(log2(#distinct levels))`` per sample (over all channels; over the grey
image, with torchvision's grey weights, for grey noise), noise = (poisson(img * vals) / vals -
img) * scale.

Backends: "torch" draws the realisations from the given generator with batched tensor ops
(``torch.poisson``) and never reads a tensor back to the host nor branches on one: both noises
are drawn for every sample and ``torch.where`` keeps the sample's own (on a GPU the extra draws
cost far less than a wait for the device); "cv2" (the CPU path of "auto", ``srcore.degrade.cpu``) works per image in
worker threads, each with its own generator seeded from the given one, and samples Poisson
noise by an inverse-CDF table lookup. The two give the same distributions, not the same
realisations.
"""
from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch

from srcore.degrade.cpu import as_numpy, cpu_map, use_cv2

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale, as BasicSR uses


def _b(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


class Draws:
    """Where the torch path's noise realisations come from: ``randn(x)`` (standard normal, x's
    shape) and ``poisson(rates)``, both from one generator (None: the default one). A
    super-batch passes ``srcore.degrade.ragged.UnitDraws`` instead: each batch's draws from its
    own generator, exactly as this draws them one batch at a time."""

    def __init__(self, gen: torch.Generator | None):
        self.gen = gen

    def randn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.gen, device=x.device, dtype=x.dtype)

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        return torch.poisson(rates, generator=self.gen)


def _draws(gen) -> Draws:
    return gen if hasattr(gen, "poisson") else Draws(gen)


def gaussian_noise(x: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, gen) -> torch.Tensor:
    """Gaussian noise of std sigma/255 ((N,) sigma in levels), the same on all channels where
    ``gray``; returns the noise (not clamped, not added). ``gen``: a generator or ``Draws``."""
    noise = _draws(gen).randn(x)
    noise = torch.where(_b(gray.to(x.device)), noise[:, :1], noise)
    return noise * _b(sigma.to(device=x.device, dtype=x.dtype) / 255)


def count_levels(q: torch.Tensor) -> torch.Tensor:
    """Number of distinct values per sample of an integer-valued (0..255) batch (N, ...), as an
    (N,) tensor on q's device: a fixed-size scatter into 256 bins per sample (``bincount`` would
    read the maximum back to the host to size its output)."""
    n = q.shape[0]
    seen = torch.zeros(n, 256, dtype=torch.bool, device=q.device)
    seen.scatter_(1, q.reshape(n, -1).long(), True)
    return seen.sum(1)


def _poisson_levels(img: torch.Tensor, gen) -> torch.Tensor:
    """BasicSR's noise core for images of any channel count: round to levels, counts at
    2^ceil(log2(#levels)) per unit, noise = poisson(img * vals) / vals - img."""
    q = (img * 255).round_().clamp_(0, 255)
    vals = torch.exp2(torch.ceil(torch.log2(count_levels(q).to(img.dtype))))
    img_q = q.div_(255)
    out = _draws(gen).poisson(img_q * _b(vals)).div_(_b(vals))
    return out.sub_(img_q)


def grey_image(x: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale of (N, 3, H, W): (N, 1, H, W)."""
    return (x * _grey_weights(x.device, x.dtype)).sum(1, keepdim=True)


@functools.lru_cache(maxsize=None)
def _grey_weights(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(GREY_WEIGHTS, device=device, dtype=dtype).view(1, 3, 1, 1)


def poisson_noise(x: torch.Tensor, gray: torch.Tensor, gen) -> torch.Tensor:
    """Unscaled Poisson noise (BasicSR's generate_poisson_noise_pt with scale 1) for a batch:
    grey (from the grey image, the same on all channels) where ``gray``, colour elsewhere.

    One draw for the whole batch: a grey sample's source is its grey image repeated on the three
    channels (same distinct levels as the grey image), and it keeps channel 0's realisation on
    all three -- a grey draw, selected by ``where``, with no per-group indexing."""
    g = _b(gray.to(x.device))
    src = torch.where(g, grey_image(x).expand_as(x), x)
    noise = _poisson_levels(src, gen)
    return torch.where(g, noise[:, :1].expand_as(noise), noise)


def add_noise(x: torch.Tensor, p: dict, gen: torch.Generator | Draws | None, backend: str = "auto") -> torch.Tensor:
    """Add per-sample Gaussian or Poisson noise (``p``: ``noise1`` or ``noise2`` of
    ``RealESRGANDegradation.sample_params``) and clamp to [0, 1]. ``backend`` "torch": batched
    tensor ops with draws from ``gen`` (both kinds drawn for every sample, then picked, Gaussian
    first; no host read); "cv2" (the CPU path of "auto"): one image per worker thread, each with
    its own generator seeded from ``gen`` (one draw), so the result does not depend on the
    number of threads. Every op of the torch path but the draws is pointwise per pixel, apart
    from the count of distinct levels, so a super-batch can run it on padded images (see
    ``srcore.degrade.ragged``)."""
    if use_cv2(x, backend):
        return _add_noise_cpu(x, p, gen)
    gen = _draws(gen)
    gauss = _b(p["gaussian"].to(x.device))
    g_noise = gaussian_noise(x, p["sigma"], p["gray"], gen)
    p_noise = poisson_noise(x, p["gray"], gen).mul_(_b(p["poisson_scale"].to(device=x.device, dtype=x.dtype)))
    return torch.where(gauss, g_noise, p_noise).add_(x).clamp_(0, 1)


_GUIDE_BINS = 2048
_POISSON_TABLES: dict = {}
_TABLE_LOCK = threading.Lock()


def _poisson_tables(vals: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Inverse-CDF tables of Poisson(level * vals / 255) for the 256 levels: the CDFs (flattened,
    K entries per level, the last set to +inf: the cut-off tail beyond mean + 12 sd + 30 has
    probability < 1e-25) and a guide table (for each level and bin j of [0, 1), the first k
    whose CDF reaches j / bins, as a flat index)."""
    with _TABLE_LOCK:
        if vals not in _POISSON_TABLES:
            lam = torch.arange(256, dtype=torch.float64) * vals / 255
            lmax = float(lam.max())
            k_max = int(math.ceil(lmax + 12 * math.sqrt(lmax) + 30))
            k = torch.arange(k_max, dtype=torch.float64)
            logp = k * torch.log(lam[:, None]) - lam[:, None] - torch.lgamma(k + 1)
            logp[0] = torch.where(k == 0, 0.0, -math.inf)  # level 0: always 0
            cdf = torch.exp(logp).cumsum(1)
            cdf[:, -1] = math.inf
            edges = (torch.arange(_GUIDE_BINS, dtype=torch.float64) / _GUIDE_BINS).expand(256, -1).contiguous()
            guide = torch.searchsorted(cdf, edges) + k_max * torch.arange(256)[:, None]
            _POISSON_TABLES[vals] = (cdf.reshape(-1).numpy(), guide.reshape(-1).to(torch.int64).numpy(), k_max)
        return _POISSON_TABLES[vals]


def poisson_from_levels(levels: np.ndarray, vals: int, u: np.ndarray) -> np.ndarray:
    """Poisson(levels * vals / 255) samples (levels: integers 0..255) by inverse-CDF lookup of
    the uniforms u in [0, 1): the smallest k with CDF(k) >= u, found from a guide table and a few
    increments. Exact up to floating point (and the < 1e-25 cut-off tail)."""
    cdf, guide, k_max = _poisson_tables(int(vals))
    shape = levels.shape
    lev = levels.astype(np.int64, copy=False).reshape(-1)
    u = u.reshape(-1)
    pos = guide[lev * _GUIDE_BINS + (u * _GUIDE_BINS).astype(np.int64)]
    for _ in range(2):
        pos += cdf[pos] < u
    idx = np.flatnonzero(cdf[pos] < u)
    while idx.size:
        pos[idx] += 1
        idx = idx[cdf[pos[idx]] < u[idx]]
    return (pos - lev * k_max).reshape(shape)


def _add_noise_cpu(x: torch.Tensor, p: dict, gen: torch.Generator) -> torch.Tensor:
    xn = as_numpy(x)
    n, c, h, w = xn.shape
    out = np.empty_like(xn)
    base = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
    gauss, gray = p["gaussian"].cpu().numpy(), p["gray"].cpu().numpy()
    sigma, scale = p["sigma"].cpu().double().numpy(), p["poisson_scale"].cpu().double().numpy()
    grey_w = np.array(GREY_WEIGHTS, dtype=np.float32).reshape(3, 1, 1)

    def one(i: int) -> None:
        gi = torch.Generator().manual_seed((base + 7919 * i) % 2**63)
        img = xn[i]
        if gauss[i]:
            noise = torch.randn((1 if gray[i] else c, h, w), generator=gi).numpy()
            noise *= np.float32(sigma[i] / 255)
        else:
            src = (img * grey_w).sum(0, keepdims=True) if gray[i] else img
            q = np.clip(np.rint(src * np.float32(255)), 0, 255).astype(np.int64)
            levels = int(np.count_nonzero(np.bincount(q.ravel(), minlength=256)))
            vals = 2 ** math.ceil(math.log2(levels))
            u = torch.rand(q.shape, generator=gi, dtype=torch.float64).numpy()
            img_q = q.astype(np.float32) / np.float32(255)
            noise = poisson_from_levels(q, vals, u).astype(np.float32) / np.float32(vals) - img_q
            noise *= np.float32(scale[i])
        np.add(img, noise, out=out[i])
        np.clip(out[i], 0, 1, out=out[i])

    cpu_map(one, range(n))
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)
