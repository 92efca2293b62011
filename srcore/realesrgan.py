"""The Real-ESRGAN two-stage training degradation (PAPER.md, "Training"), batched on the device.

``RealESRGANDegradation()(hr, g)`` takes a batch of HR crops (N, 3, H, W) in [0, 1] (the paper
feeds 400x400 crops) and a ``torch.Generator`` and returns ``(hr_target, lr)``: paired random
patches of ``gt_patch`` (128) and ``gt_patch // scale`` (32) pixels. The steps, with the paper's
values as defaults (RealESRNet's ``feed_data`` + Real-ESRGAN's dataset kernels):

0. USM sharpening of the GT (BasicSR's USMSharp: 51x51 Gaussian with OpenCV's sigma-from-size
   rule, weight 0.5, threshold 10 levels, soft mask). When ``usm`` is on, the sharpened GT is
   both what is degraded and the returned target (RealESRNet's ``gt_usm`` + ``l1_gt_usm``).
   With ``usm_on_load`` (default) the sharpening is deterministic work done ONCE PER TRAINING
   IMAGE: ``prepare_images`` sharpens each whole image (rounded to uint8) when the data is
   loaded, and ``apply`` takes the crops it is given as already sharpened (no per-batch USM).
   A crop of the sharpened image equals the sharpened crop except within ``usm_radius // 2``
   px (25) of the crop border, where the whole-image filter sees the real neighbourhood instead
   of reflect padding. ``usm_on_load=False``: per-batch USM of the crops, as the official code.
1. stage 1: blur with a random kernel (6 types, odd size 7..21 zero-padded to 21, or a sinc
   kernel with probability ``sinc_prob``); random resize (up / down / keep, scale factor, mode);
   Gaussian (sigma in levels) or Poisson noise, grey (same on all channels) or colour; clamp;
   JPEG with an integer quality.
2. stage 2: blur with probability ``second_blur_prob``; random resize to
   ``int(H / scale * s)`` x ``int(W / scale * s)``; noise; then 50/50 either
   [resize to (H // scale, W // scale) + final sinc] then JPEG, or JPEG then [resize + sinc].
   The final sinc (odd size 7..21 zero-padded to 21, as Real-ESRGAN's dataset draws it, cut-off
   U[pi/3, pi]) is applied with probability ``final_sinc_prob``, else the identity.
3. LR clamped to [0, 1] and rounded to 8-bit levels; paired random crop.

Per-sample vs per-batch randomness. The samples of one batch must share a tensor size, so the
random RESIZE of stage 1 and stage 2 (up/down/keep, scale factor and interpolation mode), the
interpolation mode of the final resize, and the order of the final [resize + sinc] / JPEG steps
are drawn ONCE PER BATCH, exactly as the official implementation does. EVERYTHING ELSE is drawn
per sample: kernel type, size and parameters (and sinc or not), stage-2 blur on/off, noise type
(Gaussian/Poisson), its sigma/scale, grey or colour noise, both JPEG qualities, final sinc on/off
and its parameters, and the crop position. (The official code draws noise type and stage-2 blur
on/off once per batch and crops the whole batch at one position; per-sample draws give more
diverse batches with the same marginal distributions.)

Randomness. ``sample_params(n, g)`` draws every parameter from ``g`` on ``g.device`` -- always the
same number of draws for a given ``n``, whatever the configuration -- including one 62-bit seed
for the noise realisations (Gaussian / Poisson samples), which ``apply`` draws from a private
generator on the images' device seeded with it. So ``apply`` is a deterministic function of
``(hr, params)``, the stream of ``g`` advances by a fixed amount per batch, and restoring
``g.get_state()`` reproduces the following batches exactly. Python's ``random`` and NumPy's
global RNG are never used.

Backends (``backend``, default "auto"). "torch": every step is a batched tensor operation on
the batch's device (grouped convolutions, ``torch.poisson``, the PyTorch JPEG codec of
``srcore.jpeg``) -- what runs on a GPU. "cv2" (what "auto" picks for CPU tensors): the same
steps per image in worker threads (``torch.get_num_threads()`` of them) with OpenCV filters,
libjpeg-turbo through OpenCV (bit-identical to Pillow), per-image noise generators seeded from
the batch seed and an inverse-CDF Poisson sampler; several times faster on a few CPU cores, and
independent of the thread count. The two backends agree up to float rounding except for the
noise realisations and the JPEG codec (the PyTorch codec is within ~0.4 levels of libjpeg).

Other details, as the official code: resizing is ``F.interpolate`` (no antialiasing,
align_corners=False, "area" = adaptive average pooling; stage 1 by ``scale_factor``; the cv2
backend does "bilinear" / "bicubic" with the identical ``cv2.resize`` resamplers); the
generalized / plateau shape beta is U[lo, 1] or U[1, hi] with probability 1/2 each (so the
plateau range [1, 2] gives beta = 1 half of the time); Poisson noise follows BasicSR's
``generate_poisson_noise_pt``: the image is rounded to 8-bit levels,
``vals = 2 ** ceil(log2(#distinct levels))`` per sample (over all channels; over the grey image,
with torchvision's grey weights, for grey noise), noise = (poisson(img * vals) / vals - img) *
scale. JPEG qualities are integers (the official DiffJPEG draws real-valued ones). Grey Gaussian
noise is drawn independently per sample (BasicSR's batched version shares one grey pattern
across the batch).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from srcore.degradations import crop_pairs, quantize
from srcore.jpeg import jpeg_compress
from srcore.kernels import (KERNEL_SIZES, KERNEL_TYPES, PAPER_KERNEL_PROB, _as_numpy, _use_cv2, cpu_map, filter2d,
                            final_sinc_kernels, kernels_from_params, pulse_kernels, sample_final_sinc_params,
                            sample_kernel_params, sep_filter2d)

RESIZE_MODES = ("area", "bilinear", "bicubic")
KNOWN_RESIZE_MODES = ("area", "bilinear", "bicubic", "nearest", "nearest-exact")
UPDOWN = ("up", "down", "keep")
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale, as BasicSR uses

DEFAULTS = dict(
    scale=4, gt_patch=128, usm=True, usm_radius=50, usm_weight=0.5, usm_threshold=10, usm_on_load=True,
    kernel_list=KERNEL_TYPES, kernel_prob=PAPER_KERNEL_PROB, blur_sigma=(0.2, 3.0), betag_range=(0.5, 4.0),
    betap_range=(1.0, 2.0), sinc_prob=0.1, resize_prob=(0.2, 0.7, 0.1), resize_range=(0.15, 1.5),
    gaussian_noise_prob=0.5, noise_range=(1.0, 30.0), poisson_scale_range=(0.05, 3.0), gray_noise_prob=0.4,
    jpeg_range=(30, 95),
    second_blur_prob=0.8, kernel_list2=KERNEL_TYPES, kernel_prob2=PAPER_KERNEL_PROB, blur_sigma2=(0.2, 1.5),
    betag_range2=(0.5, 4.0), betap_range2=(1.0, 2.0), sinc_prob2=0.1, resize_prob2=(0.3, 0.4, 0.3),
    resize_range2=(0.3, 1.2), gaussian_noise_prob2=0.5, noise_range2=(1.0, 25.0), poisson_scale_range2=(0.05, 2.5),
    gray_noise_prob2=0.4, jpeg_range2=(30, 95),
    final_sinc_prob=0.8, resize_modes=RESIZE_MODES, backend="auto",
)
BACKENDS = ("auto", "torch", "cv2")


# --------------------------------------------------------------------------------------------
# validation (pre-flight)
# --------------------------------------------------------------------------------------------
def _fail(key, value, allowed: str):
    shown = list(value) if isinstance(value, (tuple, list)) else value
    raise ValueError(f"degradation.{key}={shown!r} is invalid: {allowed}")


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


def _check_prob(key, v):
    if not _is_num(v) or not 0 <= float(v) <= 1:
        _fail(key, v, "must be a probability in [0, 1]")


def _check_dist(key, v, length: int | None = None):
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) == 0 or \
            (length is not None and len(v) != length):
        _fail(key, v, f"must be a list of {length or 'one or more'} probabilities summing to 1")
    if not all(_is_num(p) and 0 <= float(p) <= 1 for p in v) or abs(sum(float(p) for p in v) - 1) > 1e-6:
        _fail(key, v, f"must be a list of {len(v)} probabilities in [0, 1] summing to 1")


def _check_range(key, v, lo=None, hi=None, lo_open=False, integer=False, what=""):
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != 2 or not all(_is_num(x) for x in v):
        _fail(key, v, f"must be a range [low, high] of two numbers{what}")
    a, b = float(v[0]), float(v[1])
    if integer and (a != int(a) or b != int(b)):
        _fail(key, v, f"must be a range [low, high] of integers{what}")
    if a > b:
        _fail(key, v, f"must be a range [low, high] with low <= high{what}")
    if lo is not None and (a <= lo if lo_open else a < lo):
        _fail(key, v, f"values must be {'>' if lo_open else '>='} {lo}{what}")
    if hi is not None and b > hi:
        _fail(key, v, f"values must be <= {hi}{what}")


def _check_kernels(key_list, names, key_prob, probs):
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or len(names) == 0:
        _fail(key_list, names, f"must be a non-empty list of kernel names from {list(KERNEL_TYPES)}")
    for k in names:
        if k not in KERNEL_TYPES:
            _fail(key_list, names, f"kernel {k!r} is unknown; allowed: {', '.join(KERNEL_TYPES)}")
    if len(set(names)) != len(names):
        _fail(key_list, names, "kernel names must not repeat")
    _check_dist(key_prob, probs, len(names))


def validate_params(**params) -> None:
    """Pre-flight check of RealESRGANDegradation keyword arguments (any subset); raises
    ValueError naming the key, its value and what is allowed. Unknown keys are errors."""
    unknown = [k for k in params if k not in DEFAULTS]
    if unknown:
        raise ValueError(f"degradation.{unknown[0]} is not a parameter of the realesrgan degradation; "
                         f"allowed: {', '.join(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    for key in ("scale", "usm_radius"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            _fail(key, v, "must be a positive integer")
    gt = p["gt_patch"]
    if gt is not None:
        if isinstance(gt, bool) or not isinstance(gt, (int, np.integer)) or gt < 1:
            _fail("gt_patch", gt, "must be a positive integer (or null: no crop)")
        if gt % p["scale"]:
            _fail("gt_patch", gt, f"must be a multiple of scale={p['scale']}")
    for key in ("usm", "usm_on_load"):
        if not isinstance(p[key], (bool, np.bool_)):
            _fail(key, p[key], "must be true or false")
    if not _is_num(p["usm_weight"]) or float(p["usm_weight"]) < 0:
        _fail("usm_weight", p["usm_weight"], "must be a number >= 0")
    if not _is_num(p["usm_threshold"]) or float(p["usm_threshold"]) < 0:
        _fail("usm_threshold", p["usm_threshold"], "must be a number >= 0 (levels on the 0..255 scale)")
    for sfx in ("", "2"):
        _check_kernels(f"kernel_list{sfx}", p[f"kernel_list{sfx}"], f"kernel_prob{sfx}", p[f"kernel_prob{sfx}"])
        _check_range(f"blur_sigma{sfx}", p[f"blur_sigma{sfx}"], lo=0, lo_open=True)
        _check_range(f"betag_range{sfx}", p[f"betag_range{sfx}"], lo=0, lo_open=True)
        _check_range(f"betap_range{sfx}", p[f"betap_range{sfx}"], lo=0, lo_open=True)
        _check_prob(f"sinc_prob{sfx}", p[f"sinc_prob{sfx}"])
        _check_dist(f"resize_prob{sfx}", p[f"resize_prob{sfx}"], 3)
        _check_range(f"resize_range{sfx}", p[f"resize_range{sfx}"], lo=0, lo_open=True,
                     what=" (scale factors; 'down' draws in [low, 1], 'up' in [1, high])")
        rr = p[f"resize_range{sfx}"]
        if float(rr[0]) > 1 or float(rr[1]) < 1:
            _fail(f"resize_range{sfx}", rr, "must satisfy low <= 1 <= high ('down' draws in [low, 1], "
                                            "'up' in [1, high])")
        _check_prob(f"gaussian_noise_prob{sfx}", p[f"gaussian_noise_prob{sfx}"])
        _check_range(f"noise_range{sfx}", p[f"noise_range{sfx}"], lo=0, what=" (sigma in levels of 255)")
        _check_range(f"poisson_scale_range{sfx}", p[f"poisson_scale_range{sfx}"], lo=0)
        _check_prob(f"gray_noise_prob{sfx}", p[f"gray_noise_prob{sfx}"])
        _check_range(f"jpeg_range{sfx}", p[f"jpeg_range{sfx}"], lo=1, hi=100, integer=True,
                     what=" (JPEG quality in [1, 100])")
    _check_prob("second_blur_prob", p["second_blur_prob"])
    _check_prob("final_sinc_prob", p["final_sinc_prob"])
    if p["backend"] not in BACKENDS:
        _fail("backend", p["backend"], f"must be one of {', '.join(BACKENDS)} (cv2: CPU only)")
    modes = p["resize_modes"]
    if isinstance(modes, (str, bytes)) or not isinstance(modes, Sequence) or len(modes) == 0 or \
            any(m not in KNOWN_RESIZE_MODES for m in modes):
        _fail("resize_modes", modes, f"must be a non-empty list from {', '.join(KNOWN_RESIZE_MODES)}")


# --------------------------------------------------------------------------------------------
# image operations
# --------------------------------------------------------------------------------------------
def usm_kernel_1d(radius: int = 50) -> torch.Tensor:
    """BasicSR USMSharp's 1-D Gaussian: size radius (+1 if even), OpenCV's sigma-from-size rule
    (sigma 0 -> 0.3 * ((k - 1) * 0.5 - 1) + 0.8, OpenCV's fixed tables for tiny sizes). float64."""
    import cv2

    k = radius + 1 if radius % 2 == 0 else radius
    return torch.from_numpy(cv2.getGaussianKernel(k, 0, ktype=cv2.CV_64F).reshape(-1).copy())


def _usm_plane(img: np.ndarray, kn: np.ndarray, weight: float, threshold: float, out: np.ndarray) -> None:
    """USMSharp of one float32 plane in [0, 1] into ``out`` (OpenCV, reflect-101 borders)."""
    import cv2

    border = cv2.BORDER_REFLECT_101
    residual = img - cv2.sepFilter2D(img, -1, kn, kn, borderType=border)
    mask = (np.abs(residual) * np.float32(255) > threshold).astype(np.float32)
    soft = cv2.sepFilter2D(mask, -1, kn, kn, borderType=border)
    sharp = np.clip(img + np.float32(weight) * residual, 0, 1)
    np.add(img, soft * (sharp - img), out=out)


def usm_sharp(x: torch.Tensor, radius: int = 50, weight: float = 0.5, threshold: float = 10,
              backend: str = "auto") -> torch.Tensor:
    """BasicSR's USMSharp on a batch in [0, 1]: sharp = clamp(x + weight * (x - blur)), blended
    with x by a soft mask (the blurred indicator of |x - blur| * 255 > threshold):
    ``soft * sharp + (1 - soft) * x``. ``backend`` as in ``srcore.kernels.filter2d``; on CPU
    each image is processed whole in a worker thread (OpenCV + NumPy, cache-friendly)."""
    k = usm_kernel_1d(radius)
    if _use_cv2(x, backend):
        xn = _as_numpy(x)
        kn = k.numpy().astype(np.float32).reshape(-1, 1)
        out = np.empty_like(xn)

        def one(i: int) -> None:
            for ch in range(xn.shape[1]):
                _usm_plane(xn[i, ch], kn, weight, threshold, out[i, ch])

        cpu_map(one, range(xn.shape[0]))
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)
    blur = sep_filter2d(x, k, backend)
    residual = x - blur
    mask = (residual.abs().mul_(255) > threshold).to(x.dtype)
    soft = sep_filter2d(mask, k, backend)
    sharp = torch.add(x, residual, alpha=weight).clamp_(0, 1)
    return sharp.sub_(x).mul_(soft).add_(x)


def _b(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def gaussian_noise(x: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise of std sigma/255 ((N,) sigma in levels), the same on all channels where
    ``gray``; returns the noise (not clamped, not added)."""
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    noise = torch.where(_b(gray.to(x.device)), noise[:, :1], noise)
    return noise * _b(sigma.to(device=x.device, dtype=x.dtype) / 255)


def count_levels(q: torch.Tensor) -> torch.Tensor:
    """Number of distinct values per sample of an integer-valued (0..255) batch (N, ...)."""
    n = q.shape[0]
    idx = q.reshape(n, -1).long() + 256 * torch.arange(n, device=q.device).view(n, 1)
    counts = torch.bincount(idx.reshape(-1), minlength=256 * n).view(n, 256)
    return (counts > 0).sum(1)


def _poisson_one(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """BasicSR's noise core for images of any channel count: round to levels, counts at
    2^ceil(log2(#levels)) per unit, noise = poisson(img * vals) / vals - img."""
    q = (img * 255).round_().clamp_(0, 255)
    vals = torch.exp2(torch.ceil(torch.log2(count_levels(q).to(img.dtype))))
    img_q = q.div_(255)
    out = torch.poisson(img_q * _b(vals), generator=gen).div_(_b(vals))
    return out.sub_(img_q)


def poisson_noise(x: torch.Tensor, gray: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Unscaled Poisson noise (BasicSR's generate_poisson_noise_pt with scale 1) for a batch:
    grey (from the grey image, the same on all channels) where ``gray``, colour elsewhere."""
    gray = gray.to(x.device)
    noise = torch.empty_like(x)
    g_idx = gray.nonzero().view(-1)
    c_idx = (~gray).nonzero().view(-1)
    if c_idx.numel():
        noise[c_idx] = _poisson_one(x[c_idx], gen)
    if g_idx.numel():
        w = torch.tensor(GREY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        grey = (x[g_idx] * w).sum(1, keepdim=True)
        noise[g_idx] = _poisson_one(grey, gen).expand(-1, x.shape[1], -1, -1)
    return noise


def add_noise(x: torch.Tensor, p: dict, gen: torch.Generator, backend: str = "auto") -> torch.Tensor:
    """Add per-sample Gaussian or Poisson noise (parameters from ``sample_params``) and clamp to
    [0, 1]. ``backend`` "torch": batched tensor ops with draws from ``gen``; "cv2" (the CPU path
    of "auto"): one image per worker thread, each with its own generator seeded from ``gen``
    (one draw), so the result does not depend on the number of threads."""
    if _use_cv2(x, backend):
        return _add_noise_cpu(x, p, gen)
    gauss = p["gaussian"].to(x.device)
    out = torch.empty_like(x)
    g_idx = gauss.nonzero().view(-1)
    p_idx = (~gauss).nonzero().view(-1)
    if g_idx.numel():
        xs = x if g_idx.numel() == x.shape[0] else x[g_idx]
        gi = g_idx.to(p["sigma"].device)
        out[g_idx] = xs + gaussian_noise(xs, p["sigma"][gi], p["gray"][gi], gen)
    if p_idx.numel():
        xs = x if p_idx.numel() == x.shape[0] else x[p_idx]
        pi = p_idx.to(p["poisson_scale"].device)
        noise = poisson_noise(xs, p["gray"][pi], gen)
        out[p_idx] = xs + noise * _b(p["poisson_scale"][pi].to(device=x.device, dtype=x.dtype))
    return out.clamp_(0, 1)


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
    xn = _as_numpy(x)
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


def resize(x: torch.Tensor, size: tuple[int, int] | None = None, scale_factor: float | None = None,
           mode: str = "bicubic", backend: str = "torch") -> torch.Tensor:
    """F.interpolate as the official code calls it (no antialiasing, align_corners=False).

    With ``backend`` "cv2" (or "auto" on CPU), "bilinear" and "bicubic" run through
    ``cv2.resize`` per image plane in the worker threads: INTER_LINEAR / INTER_CUBIC on float32
    are the same resamplers (half-pixel centres, no antialiasing, replicated borders, cubic
    a = -0.75); measured within ~0.005 levels of F.interpolate on photographs. For
    ``scale_factor`` F.interpolate maps output pixels back by 1 / scale_factor (not by
    in / out size) and floors the output size, so cv2 gets ``fx = fy = scale_factor`` (same
    mapping; its rounded size is cropped to the floored one); within one pixel of the input size
    cv2 would copy the image instead, so that case stays on torch. "area" (adaptive average
    pooling, which upscales by replication, unlike INTER_AREA) and "nearest*" stay on torch."""
    if scale_factor is not None and scale_factor == 1 and size is None:
        return x
    if size is not None and tuple(size) == tuple(x.shape[-2:]):
        return x  # every mode is the identity at the same size
    if mode in _CV2_INTERP and _use_cv2(x, backend):
        out = _resize_cv2(x, size, scale_factor, mode)
        if out is not None:
            return out
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    if size is not None:
        return F.interpolate(x, size=(max(1, int(size[0])), max(1, int(size[1]))), mode=mode, **kw)
    return F.interpolate(x, scale_factor=scale_factor, mode=mode, **kw)


_CV2_INTERP = {"bilinear": 1, "bicubic": 2}  # cv2.INTER_LINEAR, cv2.INTER_CUBIC


def _resize_cv2(x: torch.Tensor, size, scale_factor, mode: str) -> torch.Tensor | None:
    """``resize`` through cv2.resize per plane (see there); None where torch must do it."""
    import cv2

    h, w = x.shape[-2:]
    if size is not None:
        oh, ow = max(1, int(size[0])), max(1, int(size[1]))
        args = ((ow, oh),)
    else:
        s = float(scale_factor)
        oh, ow = math.floor(float(h) * s), math.floor(float(w) * s)  # F.interpolate's output size
        if oh < 1 or ow < 1 or abs(h * s - h) < 1 or abs(w * s - w) < 1:
            return None  # cv2 would round the size to the input's and copy; torch resamples
        args = ((0, 0), None, s, s)
    xn = _as_numpy(x)
    n, c = xn.shape[:2]
    out = np.empty((n, c, oh, ow), dtype=np.float32)
    interp = _CV2_INTERP[mode]

    def one(i: int) -> None:
        for ch in range(c):
            out[i, ch] = cv2.resize(xn[i, ch], *args, interpolation=interp)[:oh, :ow]

    cpu_map(one, range(n))
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------
class RealESRGANDegradation:
    """Real-ESRGAN's two-stage degradation with the paper's settings as defaults (see module doc).

    ``__call__(hr, g) -> (hr_target, lr)``; ``sample_params(n, g)`` + ``apply(hr, params)`` (full
    size, no crop) + ``paired_crop(hr_target, lr, params)`` are the same thing in pieces.
    """

    def __init__(self, scale: int = 4, gt_patch: int | None = 128, usm: bool = True, usm_radius: int = 50,
                 usm_weight: float = 0.5, usm_threshold: float = 10, usm_on_load: bool = True,
                 # stage 1
                 kernel_list: Sequence[str] = KERNEL_TYPES, kernel_prob: Sequence[float] = PAPER_KERNEL_PROB,
                 blur_sigma=(0.2, 3.0), betag_range=(0.5, 4.0), betap_range=(1.0, 2.0), sinc_prob: float = 0.1,
                 resize_prob=(0.2, 0.7, 0.1), resize_range=(0.15, 1.5), gaussian_noise_prob: float = 0.5,
                 noise_range=(1.0, 30.0), poisson_scale_range=(0.05, 3.0), gray_noise_prob: float = 0.4,
                 jpeg_range=(30, 95),
                 # stage 2
                 second_blur_prob: float = 0.8, kernel_list2: Sequence[str] = KERNEL_TYPES,
                 kernel_prob2: Sequence[float] = PAPER_KERNEL_PROB, blur_sigma2=(0.2, 1.5), betag_range2=(0.5, 4.0),
                 betap_range2=(1.0, 2.0), sinc_prob2: float = 0.1, resize_prob2=(0.3, 0.4, 0.3),
                 resize_range2=(0.3, 1.2), gaussian_noise_prob2: float = 0.5, noise_range2=(1.0, 25.0),
                 poisson_scale_range2=(0.05, 2.5), gray_noise_prob2: float = 0.4, jpeg_range2=(30, 95),
                 final_sinc_prob: float = 0.8, resize_modes: Sequence[str] = RESIZE_MODES, backend: str = "auto"):
        cfg = {k: v for k, v in locals().items() if k in DEFAULTS}
        validate_params(**cfg)
        for k, v in cfg.items():
            if isinstance(v, Sequence) and not isinstance(v, str):
                v = tuple(v)
            setattr(self, k, v)
        self.scale, self.usm, self.usm_on_load = int(scale), bool(usm), bool(usm_on_load)
        self.gt_patch = None if gt_patch is None else int(gt_patch)
        self.kernel_sizes = KERNEL_SIZES

    def config(self) -> dict:
        """The constructor arguments (plain Python values)."""
        return {k: getattr(self, k) for k in DEFAULTS}

    # ---- once per training image ------------------------------------------------------------
    @property
    def usm_per_batch(self) -> bool:
        """Whether ``apply`` sharpens each batch (``usm`` on and ``usm_on_load`` off)."""
        return self.usm and not self.usm_on_load

    def prepare_images(self, images: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
        """The training images (name, HxWx3 uint8) as the batches must be cut from: with ``usm``
        and ``usm_on_load`` on, each whole image USM-sharpened (``usm_sharp``, OpenCV, rounded
        to uint8), else unchanged. Call once, before cutting crops: ``apply`` then does not
        sharpen, the crops it gets are the (sharpened) target. USM commutes with cropping
        except within ``usm_radius // 2`` px of a crop border (here the filter sees the real
        neighbourhood instead of reflected pixels) and with horizontal flips (symmetric kernel
        and borders). Not idempotent: do not call it twice on the same images."""
        if not (self.usm and self.usm_on_load):
            return list(images)
        images = list(images)
        for name, im in images:
            if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3):
                raise ValueError(f"prepare_images: {name!r} is not an HxWx3 uint8 image "
                                 f"({getattr(im, 'dtype', type(im))}, {getattr(im, 'shape', '')})")
        kn = usm_kernel_1d(self.usm_radius).numpy().astype(np.float32).reshape(-1, 1)
        out = [np.empty_like(im) for _, im in images]

        def one(job: tuple[int, int]) -> None:
            i, ch = job
            plane = images[i][1][:, :, ch].astype(np.float32) / np.float32(255)
            sharp = np.empty_like(plane)
            _usm_plane(plane, kn, self.usm_weight, self.usm_threshold, sharp)
            out[i][:, :, ch] = np.clip(np.rint(sharp * np.float32(255)), 0, 255).astype(np.uint8)

        cpu_map(one, [(i, ch) for i in range(len(images)) for ch in range(3)])
        return [(name, o) for (name, _), o in zip(images, out)]

    # ---- randomness ----------------------------------------------------------------------
    def _kernel_params(self, n, g, sfx):
        return sample_kernel_params(n, g, getattr(self, f"kernel_list{sfx}"), getattr(self, f"kernel_prob{sfx}"),
                                    getattr(self, f"blur_sigma{sfx}"), (-math.pi, math.pi),
                                    getattr(self, f"betag_range{sfx}"), getattr(self, f"betap_range{sfx}"),
                                    getattr(self, f"sinc_prob{sfx}"), self.kernel_sizes)

    def _noise_params(self, n, g, sfx):
        u = torch.rand(n, 4, generator=g, device=g.device, dtype=torch.float64).unbind(1)
        s_lo, s_hi = (float(v) for v in getattr(self, f"noise_range{sfx}"))
        p_lo, p_hi = (float(v) for v in getattr(self, f"poisson_scale_range{sfx}"))
        return {"gaussian": u[0] < getattr(self, f"gaussian_noise_prob{sfx}"),
                "sigma": (s_lo + (s_hi - s_lo) * u[1]).float(),
                "poisson_scale": (p_lo + (p_hi - p_lo) * u[2]).float(),
                "gray": u[3] < getattr(self, f"gray_noise_prob{sfx}")}

    def _resize_params(self, u_type, u_scale, u_mode, sfx):
        probs = getattr(self, f"resize_prob{sfx}")
        lo, hi = (float(v) for v in getattr(self, f"resize_range{sfx}"))
        cdf = np.cumsum(probs) / np.sum(probs)
        kind = UPDOWN[min(int(np.searchsorted(cdf, u_type, side="right")), 2)]
        s = 1 + (hi - 1) * u_scale if kind == "up" else lo + (1 - lo) * u_scale if kind == "down" else 1.0
        return {"type": kind, "scale": float(s), "mode": self._mode(u_mode)}

    def _mode(self, u):
        return self.resize_modes[min(int(u * len(self.resize_modes)), len(self.resize_modes) - 1)]

    def sample_params(self, n: int, g: torch.Generator) -> dict:
        """Every random choice for a batch of n, drawn from g on g.device (a fixed number of draws).

        Per batch (Python values): ``resize1`` / ``resize2`` = {"type": up|down|keep, "scale",
        "mode"}, ``final_mode`` (mode of the resize to the LR size), ``final_order``
        ("resize_sinc_first" | "jpeg_first"), ``seed`` (for the noise realisations).
        Per sample ((n,) tensors on g.device): ``kernel1`` / ``kernel2`` (dicts, see
        ``srcore.kernels.sample_kernel_params``), ``blur2`` (bool), ``noise1`` / ``noise2`` =
        {"gaussian" (bool; else Poisson), "sigma" (levels), "poisson_scale", "gray" (bool)},
        ``jpeg1`` / ``jpeg2`` (int64 qualities), ``final_sinc`` = {"on", "size", "omega"},
        ``crop`` ((n, 2) uniforms in [0, 1) for the crop's top and left).
        """
        u = torch.rand(8, generator=g, device=g.device, dtype=torch.float64).tolist()
        k1 = self._kernel_params(n, g, "")
        noise1 = self._noise_params(n, g, "")
        jpeg1 = torch.randint(int(self.jpeg_range[0]), int(self.jpeg_range[1]) + 1, (n,), generator=g, device=g.device)
        blur2 = torch.rand(n, generator=g, device=g.device, dtype=torch.float64) < self.second_blur_prob
        k2 = self._kernel_params(n, g, "2")
        noise2 = self._noise_params(n, g, "2")
        jpeg2 = torch.randint(int(self.jpeg_range2[0]), int(self.jpeg_range2[1]) + 1, (n,), generator=g,
                              device=g.device)
        final = sample_final_sinc_params(n, g, self.final_sinc_prob, self.kernel_sizes)
        crop = torch.rand(n, 2, generator=g, device=g.device, dtype=torch.float64)
        seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
        return {
            "n": n,
            "resize1": self._resize_params(u[0], u[1], u[2], ""),
            "resize2": self._resize_params(u[3], u[4], u[5], "2"),
            "final_mode": self._mode(u[6]),
            "final_order": "resize_sinc_first" if u[7] < 0.5 else "jpeg_first",
            "kernel1": k1, "noise1": noise1, "jpeg1": jpeg1,
            "blur2": blur2, "kernel2": k2, "noise2": noise2, "jpeg2": jpeg2,
            "final_sinc": final, "crop": crop, "seed": seed,
        }

    # ---- image operations ----------------------------------------------------------------
    def apply(self, hr: torch.Tensor, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Degrade the whole images: returns (hr_target (N, 3, H, W), lr (N, 3, H // scale,
        W // scale)), LR in 8-bit levels; no crop (see ``paired_crop``)."""
        x = self._check(hr)
        n, _, h, w = x.shape
        if params["n"] != n:
            raise ValueError(f"params were drawn for {params['n']} samples, the batch has {n}")
        dev = x.device
        gen = torch.Generator(device=dev)
        gen.manual_seed(params["seed"])
        be = self._backend(x)
        if self.usm_per_batch:
            target = usm_sharp(x, self.usm_radius, self.usm_weight, self.usm_threshold, be)
        else:
            target = x  # no USM, or already sharpened whole by prepare_images

        # stage 1
        out = filter2d(target, kernels_from_params(params["kernel1"], 21, dev), be)
        r = params["resize1"]
        out = resize(out, scale_factor=r["scale"], mode=r["mode"], backend=be)
        out = add_noise(out, params["noise1"], gen, be)
        out = jpeg_compress(out, params["jpeg1"].to(dev), be)

        # stage 2
        blur2 = params["blur2"].to(dev)
        if bool(blur2.any()):
            k2 = kernels_from_params(params["kernel2"], 21, dev)
            k2 = torch.where(blur2[:, None, None], k2, pulse_kernels(n, 21, dev))
            out = filter2d(out, k2, be)
        r = params["resize2"]
        out = resize(out, size=(int(h / self.scale * r["scale"]), int(w / self.scale * r["scale"])), mode=r["mode"],
                     backend=be)
        out = add_noise(out, params["noise2"], gen, be)
        lr_size = (h // self.scale, w // self.scale)
        sinc = final_sinc_kernels(params["final_sinc"], 21, dev)
        if params["final_order"] == "resize_sinc_first":
            out = filter2d(resize(out, size=lr_size, mode=params["final_mode"], backend=be), sinc, be)
            out = jpeg_compress(out.clamp(0, 1), params["jpeg2"].to(dev), be)
        else:
            out = jpeg_compress(out.clamp(0, 1), params["jpeg2"].to(dev), be)
            out = filter2d(resize(out, size=lr_size, mode=params["final_mode"], backend=be), sinc, be)
        return target, quantize(out)

    def _backend(self, x: torch.Tensor) -> str:
        if self.backend == "cv2" and x.device.type != "cpu":
            raise ValueError(f"backend='cv2' needs CPU tensors, the batch is on {x.device}")
        return self.backend

    def paired_crop(self, hr_target: torch.Tensor, lr: torch.Tensor, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut HR ``gt_patch`` / LR ``gt_patch // scale`` patches at each sample's own position."""
        if self.gt_patch is None:
            return hr_target, lr
        lq = self.gt_patch // self.scale
        h, w = lr.shape[-2:]
        if h < lq or w < lq:
            raise ValueError(f"LR {h}x{w} is smaller than the LR patch {lq}")
        u = params["crop"].to("cpu")
        tops = (u[:, 0] * (h - lq + 1)).long().clamp_max(h - lq).tolist()
        lefts = (u[:, 1] * (w - lq + 1)).long().clamp_max(w - lq).tolist()
        return crop_pairs(hr_target, lr, tops, lefts, lq, self.scale)

    def __call__(self, hr: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) HR in [0, 1], H, W >= gt_patch -> (hr_target (N, 3, gt_patch, gt_patch),
        lr (N, 3, gt_patch // scale, gt_patch // scale)); without gt_patch, the full-size pair."""
        x = self._check(hr)
        params = self.sample_params(x.shape[0], g)
        return self.paired_crop(*self.apply(x, params), params)

    def _check(self, hr: torch.Tensor) -> torch.Tensor:
        if hr.dim() != 4 or hr.shape[1] != 3:
            raise ValueError(f"expected an RGB batch (N, 3, H, W), got {tuple(hr.shape)}")
        h, w = hr.shape[-2:]
        if self.gt_patch is not None and (h < self.gt_patch or w < self.gt_patch):
            raise ValueError(f"HR {h}x{w} is smaller than gt_patch={self.gt_patch}")
        if h < self.scale or w < self.scale:
            raise ValueError(f"HR {h}x{w} is smaller than the scale {self.scale}")
        return hr if hr.is_floating_point() else hr.float() / 255
