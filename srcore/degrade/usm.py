"""USM sharpening of the ground truth (BasicSR's USMSharp), step 0 of the Real-ESRGAN pipeline.

sharp = clamp(x + weight * (x - blur)), blended with x by a soft mask (the blurred indicator of
|x - blur| * 255 > threshold): ``soft * sharp + (1 - soft) * x``. The blur is a separable
Gaussian of size ``radius`` (+1 if even) with OpenCV's sigma-from-size rule, reflect-101
borders. ``usm_sharp`` sharpens float batches; ``usm_sharp_images`` sharpens whole uint8
training images once, when they are loaded (``usm_on_load``).
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from srcore.degrade.cpu import as_numpy, cpu_map, use_cv2
from srcore.degrade.filtering import sep_filter2d


def usm_kernel_1d(radius: int) -> torch.Tensor:
    """BasicSR USMSharp's 1-D Gaussian: size radius (+1 if even), OpenCV's sigma-from-size rule
    (sigma 0 -> 0.3 * ((k - 1) * 0.5 - 1) + 0.8, OpenCV's fixed tables for tiny sizes). float64."""
    k = radius + 1 if radius % 2 == 0 else radius
    return torch.from_numpy(cv2.getGaussianKernel(k, 0, ktype=cv2.CV_64F).reshape(-1).copy())


@functools.lru_cache(maxsize=None)
def _device_kernel(radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``usm_kernel_1d`` on ``device`` in ``dtype``, built once per (radius, device, dtype) and
    shared (read-only): per batch, a fresh one would be a blocking host-to-device copy on a GPU."""
    return usm_kernel_1d(radius).to(device=device, dtype=dtype)


def _usm_plane(img: np.ndarray, kn: np.ndarray, weight: float, threshold: float, out: np.ndarray) -> None:
    """USMSharp of one float32 plane in [0, 1] into ``out`` (OpenCV, reflect-101 borders)."""
    border = cv2.BORDER_REFLECT_101
    residual = img - cv2.sepFilter2D(img, -1, kn, kn, borderType=border)
    mask = (np.abs(residual) * np.float32(255) > threshold).astype(np.float32)
    soft = cv2.sepFilter2D(mask, -1, kn, kn, borderType=border)
    sharp = np.clip(img + np.float32(weight) * residual, 0, 1)
    np.add(img, soft * (sharp - img), out=out)


def usm_sharp(x: torch.Tensor, radius: int, weight: float, threshold: float, backend: str = "auto") -> torch.Tensor:
    """BasicSR's USMSharp on a batch in [0, 1] (see the module doc). ``backend`` as in
    ``srcore.degrade.filtering.filter2d``; on CPU each image is processed whole in a worker
    thread (OpenCV + NumPy, cache-friendly)."""
    if use_cv2(x, backend):
        xn = as_numpy(x)
        kn = usm_kernel_1d(radius).numpy().astype(np.float32).reshape(-1, 1)
        out = np.empty_like(xn)

        def one(i: int) -> None:
            for ch in range(xn.shape[1]):
                _usm_plane(xn[i, ch], kn, weight, threshold, out[i, ch])

        cpu_map(one, range(xn.shape[0]))
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)
    k = _device_kernel(int(radius), x.device, x.dtype)
    blur = sep_filter2d(x, k, backend)
    residual = x - blur
    mask = (residual.abs().mul_(255) > threshold).to(x.dtype)
    soft = sep_filter2d(mask, k, backend)
    sharp = torch.add(x, residual, alpha=weight).clamp_(0, 1)
    return sharp.sub_(x).mul_(soft).add_(x)


def usm_sharp_images(images: list[tuple[str, np.ndarray]], radius: int, weight: float,
                     threshold: float) -> list[tuple[str, np.ndarray]]:
    """Each whole image (name, HxWx3 uint8) USM-sharpened with OpenCV and rounded to uint8, one
    plane per worker thread. Not idempotent: sharpening twice sharpens twice."""
    images = list(images)
    for name, im in images:
        if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3):
            raise ValueError(f"prepare_images: {name!r} is not an HxWx3 uint8 image "
                             f"({getattr(im, 'dtype', type(im))}, {getattr(im, 'shape', '')})")
    kn = usm_kernel_1d(radius).numpy().astype(np.float32).reshape(-1, 1)
    out = [np.empty_like(im) for _, im in images]

    def one(job: tuple[int, int]) -> None:
        i, ch = job
        plane = images[i][1][:, :, ch].astype(np.float32) / np.float32(255)
        sharp = np.empty_like(plane)
        _usm_plane(plane, kn, weight, threshold, sharp)
        out[i][:, :, ch] = np.clip(np.rint(sharp * np.float32(255)), 0, 255).astype(np.uint8)

    cpu_map(one, [(i, ch) for i in range(len(images)) for ch in range(3)])
    return [(name, o) for (name, _), o in zip(images, out)]
