"""PSNR / SSIM following BasicSR's conventions, for RGB-ordered images.

Inputs are ``HxWx3`` images with values in ``[0, 255]``: ``uint8`` or a float
array (a ``[0, 1]`` float image must be converted first, e.g. with
:func:`to_uint8`; a wrong range cannot be detected reliably). All arithmetic
is float64. ``crop_border`` pixels are removed from every side before
measuring (BasicSR uses ``crop_border = scale``; the paper's PSNR uses 4).

Differences from BasicSR worth knowing: BasicSR's Y conversion runs in float32
(``to_y_channel``), here it is float64, so Y-channel values can differ in the
last few float32 ulps (far below 1e-4 dB).
"""

from __future__ import annotations

import math
import sys

import cv2
import numpy as np

_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2
_SSIM_WINDOW = np.outer(cv2.getGaussianKernel(11, 1.5), cv2.getGaussianKernel(11, 1.5).T)
_SSIM_VALID = 5  # (11 - 1) // 2: border where the window leaves the image


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image in ``[0, 255]``, as MATLAB's ``rgb2ycbcr``.

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` in float64, not
    rounded (BasicSR's ``bgr2ycbcr(y_only=True)`` applied to RGB-ordered data
    with the channel weights swapped accordingly). Returns ``HxW``.
    """
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 RGB image, got shape {a.shape}")
    a = a.astype(np.float64)
    return 16.0 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0


def _prepare(img: np.ndarray, ref: np.ndarray, crop_border: int, test_y: bool, fn: str):
    """Validate, crop and convert both images; returns float64 HxWxC (C = 1 or 3)."""
    img, ref = np.asarray(img), np.asarray(ref)
    if img.shape != ref.shape:
        raise ValueError(f"{fn}: image shapes differ: {img.shape} vs reference {ref.shape}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{fn}: expected HxWx3 RGB images, got shape {img.shape}")
    for a in (img, ref):
        if not (a.dtype == np.uint8 or np.issubdtype(a.dtype, np.floating)):
            raise ValueError(f"{fn}: expected uint8 or float images in [0, 255], got dtype {a.dtype}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ValueError(f"{fn}: crop_border must be a non-negative integer, got {crop_border!r}")
    h, w = img.shape[:2]
    if h <= 2 * crop_border or w <= 2 * crop_border:
        raise ValueError(f"{fn}: crop_border {crop_border} leaves nothing of a {h}x{w} image")
    c = int(crop_border)
    img = img[c : h - c, c : w - c].astype(np.float64)
    ref = ref[c : h - c, c : w - c].astype(np.float64)
    if not (np.isfinite(img).all() and np.isfinite(ref).all()):
        raise ValueError(f"{fn}: images contain NaN or infinite values")
    if test_y:
        img, ref = rgb_to_y(img)[..., None], rgb_to_y(ref)[..., None]
    return img, ref


def psnr(img: np.ndarray, ref: np.ndarray, crop_border: int, test_y: bool = False) -> float:
    """PSNR in dB with peak 255, MSE over all pixels and channels (or on Y).

    Returns ``inf`` for identical images (after cropping).
    """
    a, b = _prepare(img, ref, crop_border, test_y, "psnr")
    return psnr_from_mse(float(np.mean((a - b) ** 2)))


def psnr_from_mse(mse: float) -> float:
    """The PSNR formula (peak 255) for a mean squared error on 8-bit levels: ``inf`` for 0.

    Shared with ``srcore.interpretation``, which averages the error of float tensors itself."""
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    # BasicSR's _ssim: Gaussian-weighted local statistics; only the 'valid'
    # region (window fully inside the image) is kept, so the border mode of
    # filter2D never affects the result.
    v = _SSIM_VALID

    def filt(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, _SSIM_WINDOW)[v:-v, v:-v]

    mu1, mu2 = filt(a), filt(b)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = filt(a * a) - mu1_sq
    sigma2_sq = filt(b * b) - mu2_sq
    sigma12 = filt(a * b) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + _SSIM_C1) * (2 * sigma12 + _SSIM_C2)) / (
        (mu1_sq + mu2_sq + _SSIM_C1) * (sigma1_sq + sigma2_sq + _SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim(img: np.ndarray, ref: np.ndarray, crop_border: int, test_y: bool = True) -> float:
    """SSIM as BasicSR's ``calculate_ssim``: on Y, or the mean over R, G, B.

    Needs at least 11x11 pixels after cropping (one full Gaussian window).
    """
    a, b = _prepare(img, ref, crop_border, test_y, "ssim")
    if a.shape[0] < 11 or a.shape[1] < 11:
        raise ValueError(f"ssim: needs at least 11x11 pixels after cropping, got {a.shape[:2]}")
    return float(np.mean([_ssim_channel(np.ascontiguousarray(a[..., i]), np.ascontiguousarray(b[..., i]))
                          for i in range(a.shape[2])]))


def scores(img: np.ndarray, ref: np.ndarray, crop_border: int) -> dict[str, float]:
    """``{"psnr", "psnr_y", "ssim_y"}`` of one image: bit-identical to ``psnr(img, ref, c)``,
    ``psnr(img, ref, c, test_y=True)`` and ``ssim(img, ref, c)``, but the checks, the crop, the
    float64 copy and the Y conversion are done once instead of three and two times (about a
    third less work; the evaluation loop's metrics)."""
    a, b = _prepare(img, ref, crop_border, False, "scores")
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    if ya.shape[0] < 11 or ya.shape[1] < 11:
        raise ValueError(f"ssim: needs at least 11x11 pixels after cropping, got {ya.shape}")
    return {"psnr": psnr_from_mse(float(np.mean((a - b) ** 2))),
            "psnr_y": psnr_from_mse(float(np.mean((ya[..., None] - yb[..., None]) ** 2))),
            "ssim_y": float(np.mean([_ssim_channel(ya, yb)]))}


def to_uint8(x) -> np.ndarray:
    """Float image in ``[0, 1]`` -> ``uint8`` HxWx3 RGB, clamped and rounded.

    Accepts a torch tensor ``CxHxW`` (or ``1xCxHxW``), handled like BasicSR's
    ``tensor2img``: float32, ``(x.clamp(0, 1) * 255).round()``; or a numpy
    ``HxWxC`` array, handled the same way in its own float dtype. Rounding is
    half-to-even in both. NaN/inf raise ``ValueError`` rather than silently
    turning into arbitrary pixel values.
    """
    # A tensor can only exist if torch is already imported, so no need to
    # import torch (slow) here for numpy callers.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().cpu().float()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3:
            raise ValueError(f"to_uint8 expects a CxHxW (or 1xCxHxW) tensor, got shape {tuple(x.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError("to_uint8: tensor contains NaN or infinite values")
        out = (t.clamp(0, 1) * 255.0).round().permute(1, 2, 0).numpy()
    else:
        a = np.asarray(x)
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"to_uint8 expects a float image in [0, 1], got dtype {a.dtype}")
        if a.ndim != 3:
            raise ValueError(f"to_uint8 expects an HxWxC array, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("to_uint8: array contains NaN or infinite values")
        out = np.round(np.clip(a, 0, 1) * 255.0)
    if out.shape[2] != 3:
        raise ValueError(f"to_uint8 expects 3 channels (RGB), got {out.shape[2]}")
    return np.ascontiguousarray(out.astype(np.uint8))
