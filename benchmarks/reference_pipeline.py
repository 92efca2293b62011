"""A plain per-image NumPy / OpenCV implementation of the Real-ESRGAN two-stage degradation.

This is the speed baseline for ``srcore.degrade.realesrgan.RealESRGANDegradation``: what one writes
without batching (one image at a time, as the original per-image BasicSR / BSRGAN degradation
scripts do), with every random draw from a ``numpy.random.Generator``. It follows the same
parameter distributions as the paper's training setting (``/work/shared/PAPER.md``, "Training")
and BasicSR's ``degradations.py`` / Real-ESRGAN's ``realesrgan_model.py``, but it is *not* a
numerical reference for the batched pipeline: its random streams, JPEG codec and resampling
kernels differ.

Per image (HxWx3 float32 RGB in [0, 1]):

  GT --USM--> gt_usm
  stage 1: random mixed kernel (or sinc) blur -> random resize -> Gaussian/Poisson noise -> JPEG
  stage 2: blur (p 0.8) -> random resize -> noise ->
           50/50: [resize to H/scale + final sinc (p 0.8)] then JPEG, or JPEG then [resize + sinc]
  LR clamped and rounded to 8-bit levels; paired random crop (gt_patch / gt_patch // scale).

The L1 target is the sharpened GT when ``usm`` is on (Real-ESRNet's ``l1_gt_usm``), else the GT.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from scipy import special

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
PAPER_KERNEL_PROB = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
RESIZE_MODES = ("area", "bilinear", "bicubic")
_CV2_INTERP = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


# --------------------------------------------------------------------------------------------
# kernels (BasicSR formulas)
# --------------------------------------------------------------------------------------------
def mesh_grid(size: int) -> np.ndarray:
    """(size, size, 2) grid of (x, y) offsets from the centre of an odd-sized kernel."""
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def sigma_matrix2(sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    """Covariance U diag(sig_x^2, sig_y^2) U^T with U the rotation by theta."""
    d = np.diag([sig_x**2, sig_y**2])
    u = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return u @ d @ u.T


def _quadratic_form(size: int, sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    """x^T S^-1 x over the kernel grid."""
    grid = mesh_grid(size)
    inv = np.linalg.inv(sigma_matrix2(sig_x, sig_y, theta))
    return np.sum((grid @ inv) * grid, axis=-1)


def _normalise(k: np.ndarray) -> np.ndarray:
    return (k / k.sum()).astype(np.float32)


def bivariate_gaussian(size: int, sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    return _normalise(np.exp(-0.5 * _quadratic_form(size, sig_x, sig_y, theta)))


def bivariate_generalized_gaussian(size: int, sig_x: float, sig_y: float, theta: float, beta: float) -> np.ndarray:
    return _normalise(np.exp(-0.5 * np.power(_quadratic_form(size, sig_x, sig_y, theta), beta)))


def bivariate_plateau(size: int, sig_x: float, sig_y: float, theta: float, beta: float) -> np.ndarray:
    return _normalise(1.0 / (np.power(_quadratic_form(size, sig_x, sig_y, theta), beta) + 1.0))


def circular_lowpass_kernel(cutoff: float, size: int) -> np.ndarray:
    """2-D sinc (ideal circular low-pass with cut-off ``cutoff`` rad/pixel), normalised."""
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    r = np.sqrt((x - c) ** 2 + (y - c) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    k[size // 2, size // 2] = cutoff**2 / (4 * np.pi)  # the limit at r = 0
    return _normalise(k)


def _sample_beta(rng: np.random.Generator, beta_range: Sequence[float]) -> float:
    # BasicSR: half of the draws below 1, half above (as far as the range allows)
    lo, hi = beta_range
    if rng.uniform() < 0.5:
        return float(rng.uniform(lo, min(1.0, hi)))
    return float(rng.uniform(max(1.0, lo), hi))


def random_mixed_kernel(rng: np.random.Generator, size: int, kernel_prob: Sequence[float],
                        sigma_range: Sequence[float], rotation_range: Sequence[float],
                        betag_range: Sequence[float], betap_range: Sequence[float]) -> np.ndarray:
    """One kernel of a random type (iso / aniso / generalized / plateau)."""
    kind = KERNEL_TYPES[rng.choice(len(KERNEL_TYPES), p=np.asarray(kernel_prob) / np.sum(kernel_prob))]
    sig_x = float(rng.uniform(*sigma_range))
    if "aniso" not in kind:
        sig_y, theta = sig_x, 0.0
    else:
        sig_y, theta = float(rng.uniform(*sigma_range)), float(rng.uniform(*rotation_range))
    if kind.startswith("generalized"):
        return bivariate_generalized_gaussian(size, sig_x, sig_y, theta, _sample_beta(rng, betag_range))
    if kind.startswith("plateau"):
        return bivariate_plateau(size, sig_x, sig_y, theta, _sample_beta(rng, betap_range))
    return bivariate_gaussian(size, sig_x, sig_y, theta)


# --------------------------------------------------------------------------------------------
# per-image operations (HxWx3 float32 RGB)
# --------------------------------------------------------------------------------------------
def usm_sharp(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: float = 10) -> np.ndarray:
    """BasicSR's unsharp masking: a soft mask of where |img - blur| exceeds ``threshold`` levels."""
    if radius % 2 == 0:
        radius += 1
    blur = cv2.GaussianBlur(img, (radius, radius), 0)  # sigma from ksize, reflect-101
    residual = img - blur
    mask = (np.abs(residual) * 255 > threshold).astype(np.float32)
    soft_mask = cv2.GaussianBlur(mask, (radius, radius), 0)
    sharp = np.clip(img + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img


def filter2d(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each channel with ``kernel`` (reflect-101 borders). The kernels used here are
    point-symmetric, so this is also their convolution."""
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def resize(img: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    return cv2.resize(img, (max(1, width), max(1, height)), interpolation=_CV2_INTERP[mode])


def gaussian_noise(rng: np.random.Generator, img: np.ndarray, sigma: float, gray: bool) -> np.ndarray:
    """img + N(0, sigma/255), the same for all channels when ``gray``; clipped to [0, 1]."""
    h, w, c = img.shape
    if gray:
        noise = np.repeat(rng.standard_normal((h, w, 1), dtype=np.float32), c, axis=2)
    else:
        noise = rng.standard_normal((h, w, c), dtype=np.float32)
    return np.clip(img + noise * np.float32(sigma / 255), 0, 1)


def poisson_noise(rng: np.random.Generator, img: np.ndarray, scale: float, gray: bool) -> np.ndarray:
    """BasicSR's Poisson noise: counts at 2^ceil(log2(#levels)) per unit, times ``scale``; clipped."""
    x = img @ np.array([0.299, 0.587, 0.114], np.float32) if gray else img
    levels = np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
    distinct = np.count_nonzero(np.bincount(levels.ravel(), minlength=256))  # len(np.unique(x)), faster
    vals = 2 ** np.ceil(np.log2(distinct))
    x = levels.astype(np.float32) / 255
    noise = (rng.poisson(x * vals) / vals - x).astype(np.float32)
    if gray:
        noise = np.repeat(noise[..., None], img.shape[2], axis=2)
    return np.clip(img + noise * np.float32(scale), 0, 1)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Real JPEG round trip (OpenCV's libjpeg) of the 8-bit image."""
    arr = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", arr[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])  # RGB -> BGR
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255


def quantize(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255), 0, 255).astype(np.float32) / 255


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------
class ReferenceRealESRGAN:
    """Per-image Real-ESRGAN degradation with the paper's parameters (defaults).

    ``__call__(images, rng)`` takes a sequence of HxWx3 float32 RGB images in [0, 1] (or an
    NHWC array) and returns ``(hr_target, lr)`` as float32 NHWC arrays of
    ``gt_patch`` x ``gt_patch`` and ``gt_patch // scale`` squared pixels; LR values are 8-bit levels.
    """

    def __init__(self, scale: int = 4, gt_patch: int = 128, usm: bool = True,
                 usm_weight: float = 0.5, usm_radius: int = 50, usm_threshold: float = 10,
                 kernel_sizes: Sequence[int] = tuple(range(7, 22, 2)),
                 kernel_prob: Sequence[float] = PAPER_KERNEL_PROB,
                 blur_sigma: Sequence[float] = (0.2, 3.0), betag_range: Sequence[float] = (0.5, 4.0),
                 betap_range: Sequence[float] = (1.0, 2.0), rotation_range: Sequence[float] = (-math.pi, math.pi),
                 sinc_prob: float = 0.1,
                 resize_prob: Sequence[float] = (0.2, 0.7, 0.1), resize_range: Sequence[float] = (0.15, 1.5),
                 gaussian_noise_prob: float = 0.5, noise_range: Sequence[float] = (1.0, 30.0),
                 poisson_scale_range: Sequence[float] = (0.05, 3.0), gray_noise_prob: float = 0.4,
                 jpeg_range: Sequence[int] = (30, 95),
                 second_blur_prob: float = 0.8, kernel_prob2: Sequence[float] = PAPER_KERNEL_PROB,
                 blur_sigma2: Sequence[float] = (0.2, 1.5), betag_range2: Sequence[float] = (0.5, 4.0),
                 betap_range2: Sequence[float] = (1.0, 2.0), sinc_prob2: float = 0.1,
                 resize_prob2: Sequence[float] = (0.3, 0.4, 0.3), resize_range2: Sequence[float] = (0.3, 1.2),
                 gaussian_noise_prob2: float = 0.5, noise_range2: Sequence[float] = (1.0, 25.0),
                 poisson_scale_range2: Sequence[float] = (0.05, 2.5), gray_noise_prob2: float = 0.4,
                 jpeg_range2: Sequence[int] = (30, 95), final_sinc_prob: float = 0.8):
        if gt_patch % scale:
            raise ValueError(f"gt_patch={gt_patch} is not a multiple of scale={scale}")
        self.scale, self.gt_patch, self.usm = scale, gt_patch, usm
        self.usm_weight, self.usm_radius, self.usm_threshold = usm_weight, usm_radius, usm_threshold
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel sizes must be odd: {self.kernel_sizes}")
        self.stage1 = dict(kernel_prob=kernel_prob, sigma_range=blur_sigma, betag_range=betag_range,
                           betap_range=betap_range, sinc_prob=sinc_prob, resize_prob=resize_prob,
                           resize_range=resize_range, gaussian_noise_prob=gaussian_noise_prob,
                           noise_range=noise_range, poisson_scale_range=poisson_scale_range,
                           gray_noise_prob=gray_noise_prob, jpeg_range=jpeg_range)
        self.stage2 = dict(kernel_prob=kernel_prob2, sigma_range=blur_sigma2, betag_range=betag_range2,
                           betap_range=betap_range2, sinc_prob=sinc_prob2, resize_prob=resize_prob2,
                           resize_range=resize_range2, gaussian_noise_prob=gaussian_noise_prob2,
                           noise_range=noise_range2, poisson_scale_range=poisson_scale_range2,
                           gray_noise_prob=gray_noise_prob2, jpeg_range=jpeg_range2)
        self.rotation_range = rotation_range
        self.second_blur_prob, self.final_sinc_prob = second_blur_prob, final_sinc_prob

    # ---- random pieces -------------------------------------------------------------------
    def blur_kernel(self, rng: np.random.Generator, stage: dict) -> np.ndarray:
        """A stage's kernel: a sinc with probability ``sinc_prob``, else a random mixed kernel."""
        size = int(rng.choice(self.kernel_sizes))
        if rng.uniform() < stage["sinc_prob"]:
            omega = rng.uniform(np.pi / 3, np.pi) if size < 13 else rng.uniform(np.pi / 5, np.pi)
            return circular_lowpass_kernel(omega, size)
        return random_mixed_kernel(rng, size, stage["kernel_prob"], stage["sigma_range"], self.rotation_range,
                                   stage["betag_range"], stage["betap_range"])

    def final_sinc_kernel(self, rng: np.random.Generator) -> np.ndarray | None:
        """The final sinc filter, or None (identity) with probability 1 - final_sinc_prob."""
        if rng.uniform() < self.final_sinc_prob:
            size = int(rng.choice(self.kernel_sizes))
            return circular_lowpass_kernel(rng.uniform(np.pi / 3, np.pi), size)
        return None

    @staticmethod
    def _resize_factor(rng: np.random.Generator, stage: dict) -> float:
        kind = rng.choice(3, p=np.asarray(stage["resize_prob"]) / np.sum(stage["resize_prob"]))
        lo, hi = stage["resize_range"]
        return float(rng.uniform(1, hi)) if kind == 0 else float(rng.uniform(lo, 1)) if kind == 1 else 1.0

    @staticmethod
    def _noise(rng: np.random.Generator, img: np.ndarray, stage: dict) -> np.ndarray:
        gray = rng.uniform() < stage["gray_noise_prob"]
        if rng.uniform() < stage["gaussian_noise_prob"]:
            return gaussian_noise(rng, img, rng.uniform(*stage["noise_range"]), gray)
        return poisson_noise(rng, img, rng.uniform(*stage["poisson_scale_range"]), gray)

    @staticmethod
    def _jpeg(rng: np.random.Generator, img: np.ndarray, stage: dict) -> np.ndarray:
        lo, hi = stage["jpeg_range"]
        return jpeg(np.clip(img, 0, 1), int(rng.integers(lo, hi + 1)))

    # ---- one image -------------------------------------------------------------------------
    def degrade_one(self, gt: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One HxWx3 float32 image -> (hr_target gt_patch^2, lr (gt_patch//scale)^2), HWC float32."""
        gt = np.asarray(gt, dtype=np.float32)
        h, w = gt.shape[:2]
        lq_h, lq_w = h // self.scale, w // self.scale
        lq_patch = self.gt_patch // self.scale
        if lq_h < lq_patch or lq_w < lq_patch:
            raise ValueError(f"image {h}x{w} is smaller than the GT patch {self.gt_patch}")
        target = usm_sharp(gt, self.usm_weight, self.usm_radius, self.usm_threshold) if self.usm else gt

        # stage 1
        s1 = self.stage1
        out = filter2d(target, self.blur_kernel(rng, s1))
        f = self._resize_factor(rng, s1)
        mode = RESIZE_MODES[rng.integers(3)]
        out = resize(out, int(h * f), int(w * f), mode)
        out = self._noise(rng, out, s1)
        out = self._jpeg(rng, out, s1)

        # stage 2
        s2 = self.stage2
        if rng.uniform() < self.second_blur_prob:
            out = filter2d(out, self.blur_kernel(rng, s2))
        f = self._resize_factor(rng, s2)
        mode = RESIZE_MODES[rng.integers(3)]
        out = resize(out, int(h / self.scale * f), int(w / self.scale * f), mode)
        out = self._noise(rng, out, s2)
        sinc = self.final_sinc_kernel(rng)
        mode = RESIZE_MODES[rng.integers(3)]

        def resize_and_sinc(x):
            x = resize(x, lq_h, lq_w, mode)
            return x if sinc is None else filter2d(x, sinc)

        if rng.uniform() < 0.5:
            out = self._jpeg(rng, resize_and_sinc(out), s2)
        else:
            out = resize_and_sinc(self._jpeg(rng, out, s2))
        lr = quantize(out)

        # paired random crop
        top, left = int(rng.integers(lq_h - lq_patch + 1)), int(rng.integers(lq_w - lq_patch + 1))
        lr = lr[top:top + lq_patch, left:left + lq_patch]
        s = self.scale
        hr = target[top * s:top * s + self.gt_patch, left * s:left * s + self.gt_patch]
        return np.ascontiguousarray(hr), np.ascontiguousarray(lr)

    def __call__(self, images, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.degrade_one(img, rng) for img in images]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
