"""The paper's fixed test-time degradations (Reflash Dropout, CVPR 2022).

Eight LR versions of every HR test image are made by applying, in this order,

    blur (HR) -> bicubic x1/scale downsample -> Gaussian noise (LR) -> JPEG (LR)

with any subset of {blur, noise, jpeg} switched on (``clean`` = bicubic only):

- blur:  ``cv2.GaussianBlur(hr, (21, 21), 2)`` — 21x21 kernel, sigma 2 in both
  directions, reflect-101 borders (OpenCV's default), on the uint8 HR;
- downsample: Pillow ``Image.resize((w // scale, h // scale), Image.BICUBIC)``
  (Pillow's bicubic, which antialiases; *not* MATLAB ``imresize``);
- noise: ``rng = np.random.default_rng(seed)``,
  ``n = rng.normal(0, 20/255, size=(h, w, 3))`` (float64, one draw per pixel
  per channel, C order), ``np.clip(lr / 255 + n, 0, 1) * 255`` then
  **truncated** to uint8 with ``astype`` (as the official script does; not
  rounded);
- jpeg: Pillow JPEG encode at quality 50 (other options at Pillow's
  defaults), decoded back to RGB uint8, all in memory
  (:func:`srcore.imageio.jpeg_roundtrip`).

The official script seeds nothing; here the noise is reproducible: use
:func:`noise_seed` to get one seed per (test set, image, degradation) so every
model, in every process, is scored on the very same noisy LR image.

Callers should :func:`mod_crop` the HR first, so that ``LR * scale == HR``
shape and the metrics compare aligned images. :class:`PaperSuite` does all
of this for whole test sets: it is the suite ``srcore.evaluation.scoring``
scores for the paper's tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import cv2
import numpy as np
from PIL import Image

from srcore.evaluation.lr_cache import LRCache, image_digest
from srcore.evaluation.suite import EvalCase, Suite
from srcore.imageio import jpeg_roundtrip

TEST_DEGRADATIONS = (
    "clean",
    "blur",
    "noise",
    "jpeg",
    "blur+noise",
    "blur+jpeg",
    "noise+jpeg",
    "blur+noise+jpeg",
)

BLUR_KERNEL_SIZE = 21
BLUR_SIGMA = 2.0
NOISE_SIGMA = 20.0 / 255.0  # in [0, 1] intensity units
JPEG_QUALITY = 50


def parse_degradation(name: str) -> tuple[bool, bool, bool]:
    """``(blur, noise, jpeg)`` flags of a test degradation name.

    Only the eight names of ``TEST_DEGRADATIONS`` are accepted: components are
    joined by ``+`` in the canonical order blur, noise, jpeg, so e.g.
    ``"jpeg+noise"`` is rejected rather than silently reordered (the order in
    which they are applied is fixed, and result tables key on the name).
    """
    if not isinstance(name, str) or name not in TEST_DEGRADATIONS:
        raise ValueError(
            f"unknown test degradation {name!r}; allowed: {', '.join(TEST_DEGRADATIONS)}"
        )
    parts = set(name.split("+"))
    return ("blur" in parts, "noise" in parts, "jpeg" in parts)


def _check_scale(scale: int) -> None:
    # bool is an int subclass; scale=True is certainly a mistake.
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")


def _check_rgb_uint8(img: np.ndarray, what: str) -> None:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{what} must be a numpy uint8 HxWx3 array, got {type(img).__name__}")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(
            f"{what} must be a uint8 HxWx3 RGB array, got {img.dtype} array of shape {img.shape}"
        )


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop ``img`` (HxW or HxWxC) to height and width multiples of ``scale``.

    Keeps the top-left corner, like BasicSR's ``mod_crop``; returns a view.
    """
    _check_scale(scale)
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        raise ValueError(f"mod_crop expects an HxW or HxWxC array, got {getattr(img, 'shape', type(img))}")
    h, w = img.shape[:2]
    if h < scale or w < scale:
        raise ValueError(f"image of size {h}x{w} is smaller than the scale {scale}")
    return img[: h - h % scale, : w - w % scale, ...]


def noise_seed(set_name: str, image_name: str, degradation: str, base_seed: int = 0) -> int:
    """Stable 64-bit seed for the noise of one test image under one degradation.

    SHA-256 of ``f"{base_seed}\\0{set_name}\\0{image_name}\\0{degradation}"``
    (UTF-8), first 8 bytes read big-endian. Python's ``hash()`` is salted per
    process, so it cannot be used for this. Pass the image's file stem as
    ``image_name`` (e.g. ``"baby"`` for ``baby.png``) consistently.
    """
    for label, value in (("set_name", set_name), ("image_name", image_name), ("degradation", degradation)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{label} must be a non-empty string, got {value!r}")
    if isinstance(base_seed, bool) or not isinstance(base_seed, (int, np.integer)):
        raise ValueError(f"base_seed must be an integer, got {base_seed!r}")
    # NUL separators keep ("a", "bc") and ("ab", "c") apart.
    key = f"{int(base_seed)}\0{set_name}\0{image_name}\0{degradation}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def make_test_lr(hr: np.ndarray, degradation: str, scale: int = 4, seed: int = 0) -> np.ndarray:
    """Degraded LR test image (uint8 ``(h // scale, w // scale, 3)``) from a uint8 RGB HR.

    ``seed`` only matters for degradations containing ``noise``; get it from
    :func:`noise_seed`. The HR is not modified.
    """
    blur, noise, jpeg = parse_degradation(degradation)
    _check_rgb_uint8(hr, "HR image")
    _check_scale(scale)
    h, w = hr.shape[:2]
    if h < scale or w < scale:
        raise ValueError(f"HR image of size {h}x{w} is smaller than the scale {scale}")

    img = np.ascontiguousarray(hr)
    if blur:
        # sigmaY=0 means "same as sigmaX"; default border is BORDER_REFLECT_101.
        img = cv2.GaussianBlur(img, (BLUR_KERNEL_SIZE, BLUR_KERNEL_SIZE), BLUR_SIGMA)

    # Pillow's bicubic (a=-0.5, antialiased support when shrinking), which is
    # what the official script uses; results differ from MATLAB/torch bicubic.
    lr = np.asarray(
        Image.fromarray(img).resize((w // scale, h // scale), Image.Resampling.BICUBIC),
        dtype=np.uint8,
    )

    if noise:
        rng = np.random.default_rng(seed)
        noisy = lr.astype(np.float64) / 255.0 + rng.normal(0.0, NOISE_SIGMA, size=lr.shape)
        # Truncation (not rounding) reproduces the official script's uint8 cast.
        lr = (np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)

    if jpeg:
        lr = jpeg_roundtrip(np.ascontiguousarray(lr), JPEG_QUALITY)

    return np.ascontiguousarray(lr)


class PaperSuite(Suite):
    """The paper's test protocol as a suite: every image of every test set (``{set: [(name,
    HxWx3 uint8 HR)]}``), :func:`mod_crop`-ped, under each of ``degradations`` (in that order),
    with the noise seeded by :func:`noise_seed` from ``base_seed``.

    With ``lr_cache`` (a folder, or an ``LRCache``) the LR images are read from that disk cache,
    and made and stored there on a miss (``srcore.evaluation.lr_cache``): the same arrays as
    without it, byte for byte."""

    def __init__(self, test_sets: dict[str, list[tuple[str, np.ndarray]]], degradations: list[str], scale: int,
                 base_seed: int = 0, lr_cache=None):
        self.test_sets, self.degradations, self.scale, self.base_seed = test_sets, degradations, scale, base_seed
        self.lr_cache = lr_cache if lr_cache is None or isinstance(lr_cache, LRCache) else LRCache(lr_cache)

    def __len__(self) -> int:
        return sum(len(images) for images in self.test_sets.values()) * len(self.degradations)

    def __iter__(self) -> Iterator[EvalCase]:
        for set_name, images in self.test_sets.items():
            for image_name, hr in images:
                hr = mod_crop(hr, self.scale)
                digest = None if self.lr_cache is None else image_digest(hr)
                for deg in self.degradations:
                    seed = noise_seed(set_name, image_name, deg, self.base_seed)
                    if digest is None:
                        lr = make_test_lr(hr, deg, self.scale, seed=seed)
                    else:
                        lr = self.lr_cache.get(digest, deg, self.scale, seed,
                                               lambda: make_test_lr(hr, deg, self.scale, seed=seed))  # noqa: B023
                    yield EvalCase(set_name, image_name, deg, lr, hr)
