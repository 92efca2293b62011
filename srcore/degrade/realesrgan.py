"""The Real-ESRGAN two-stage training degradation (PAPER.md, "Training"), batched on the device.

``RealESRGANDegradation(scale, gt_patch, **params)(hr, g)`` takes a batch of HR crops
(N, 3, H, W) in [0, 1] (the paper feeds 400x400 crops) and a ``torch.Generator`` and returns
``(hr_target, lr)``: paired random patches of ``gt_patch`` (128) and ``gt_patch // scale`` (32)
pixels. The parameters are ``RealESRGANParams`` (``srcore.degrade.realesrgan_params``); the
paper's values are in conf/degradation/realesrgan.yaml (RealESRNet's ``feed_data`` +
Real-ESRGAN's dataset kernels). The steps:

0. USM sharpening of the GT (``srcore.degrade.usm``: BasicSR's USMSharp, 51x51 Gaussian with
   OpenCV's sigma-from-size rule, weight 0.5, threshold 10 levels, soft mask). When ``usm`` is
   on, the sharpened GT is both what is degraded and the returned target (RealESRNet's
   ``gt_usm`` + ``l1_gt_usm``). With ``usm_on_load`` (the paper's setting) the sharpening is
   deterministic work done ONCE PER TRAINING IMAGE: ``prepare_images`` sharpens each whole image
   (rounded to uint8) when the data is loaded, and ``apply`` takes the crops it is given as
   already sharpened (no per-batch USM). A crop of the sharpened image equals the sharpened crop
   except within ``usm_radius // 2`` px (25) of the crop border, where the whole-image filter
   sees the real neighbourhood instead of reflect padding. ``usm_on_load=False``: per-batch USM
   of the crops, as the official code.
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
Several views of one batch (``views(hr, g, k)``, Simple Align) each call ``sample_params``:
every choice above, per-batch resizes included, is drawn anew per view; only the crop is
shared (drawn once, before the views; each view's own ``crop`` draw goes unused).

Randomness. ``sample_params(n, g)`` draws every parameter from ``g`` on ``g.device`` -- always the
same number of draws for a given ``n``, whatever the configuration -- including one 62-bit seed
for the noise realisations (Gaussian / Poisson samples), which ``apply`` draws from a private
generator on the images' device seeded with it. So ``apply`` is a deterministic function of
``(hr, params)``, the stream of ``g`` advances by a fixed amount per batch, and restoring
``g.get_state()`` reproduces the following batches exactly. Python's ``random`` and NumPy's
global RNG are never used.

Backends (``backend``, the paper's config: "auto"). "torch": every step is a batched tensor
operation on the batch's device (grouped convolutions, ``torch.poisson``, the PyTorch JPEG codec
of ``srcore.degrade.jpeg``) -- what runs on a GPU. "cv2" (what "auto" picks for CPU tensors): the
same steps per image in worker threads (``srcore.degrade.cpu``) with OpenCV filters, the real
libjpeg-turbo codec (``srcore.imageio.jpeg_roundtrip``), per-image noise generators seeded from
the batch seed and an inverse-CDF Poisson sampler; several times faster on a few CPU cores, and
independent of the thread count. The two backends agree up to float rounding except for the
noise realisations and the JPEG codec (the PyTorch codec is within ~0.4 levels of libjpeg).

Super-batches. ``many(hrs, g, views)`` degrades K batches in one call with exactly the draws and
per-sample results of K calls; on the torch backend it builds every kernel and runs the stage-1
blur, the final sinc and the crops once for all, and the batches' differently-sized middles in
replicate-padded groups (``srcore.degrade.realesrgan_many``), so a GPU pays the launches once
per super-batch. The OpenCV path loops.

Other details, as the official code: resizing is ``F.interpolate`` (``srcore.degrade.resize``:
no antialiasing, align_corners=False, "area" = adaptive average pooling; stage 1 by
``scale_factor``; the cv2 backend does "bilinear" / "bicubic" with the identical ``cv2.resize``
resamplers); the generalized / plateau shape beta is U[lo, 1] or U[1, hi] with probability 1/2
each (so the plateau range [1, 2] gives beta = 1 half of the time); noise as
``srcore.degrade.noise`` describes. JPEG qualities are integers (the official DiffJPEG draws
real-valued ones).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from srcore.degrade.base import Degradation
from srcore.degrade.common import Crop, crop_pairs, noise_generator, quantize
from srcore.degrade.cpu import use_cv2
from srcore.degrade.filtering import filter2d
from srcore.degrade.jpeg import jpeg_compress
from srcore.degrade.kernels import (final_sinc_kernels, kernels_from_params, pulse_kernels, sample_final_sinc_params,
                                    sample_kernel_params)
from srcore.degrade.noise import add_noise
from srcore.degrade.realesrgan_params import RealESRGANParams, validate_params
from srcore.degrade.resize import resize
from srcore.degrade.usm import usm_sharp, usm_sharp_images

UPDOWN = ("up", "down", "keep")


def bucketed(size: int, bucket: int) -> int:
    """``size`` rounded to the nearest multiple of ``bucket`` (halves up), at least ``bucket``."""
    return max(bucket, bucket * ((2 * int(size) + bucket) // (2 * bucket)))


def params_to(params, device: torch.device):
    """A copy of ``sample_params``'s dict with every tensor on ``device``; the same objects where
    they are there already. Copies to a device are non-blocking: the host does not wait for the
    device's queue to drain (a copy from unpinned memory is staged by the driver first -- a few
    hundred bytes here). A copy to the CPU (parameters drawn on a GPU, images on the CPU) blocks:
    the host reads it at once."""
    if isinstance(params, dict):
        return {k: params_to(v, device) for k, v in params.items()}
    if isinstance(params, torch.Tensor) and params.device != device:
        return params.to(device, non_blocking=device.type != "cpu")
    return params


class RealESRGANDegradation(Degradation):
    """Real-ESRGAN's two-stage degradation (see module doc); ``params`` are the fields of
    ``RealESRGANParams`` other than ``scale`` and ``gt_patch``, all required.

    ``__call__(hr, g, crop=None) -> (hr_target, lr)``; ``sample_params(n, g)`` + ``apply(hr, params)``
    (full size, no crop) + ``paired_crop(hr_target, lr, params, crop=None)`` are the same thing in
    pieces.
    """

    group_px: float | None = None  # many(): a padded group's launches in pixels (None: per device)

    def __init__(self, scale: int, gt_patch: int | None, **params):
        self.params = RealESRGANParams.from_dict({"scale": scale, "gt_patch": gt_patch, **params})
        super().__init__(self.params.scale, self.params.gt_patch)

    @classmethod
    def validate(cls, params: dict) -> None:
        validate_params(params)

    def config(self) -> dict:
        """The constructor arguments (plain Python values)."""
        return dataclasses.asdict(self.params)

    # ---- once per training image ------------------------------------------------------------
    @property
    def usm_per_batch(self) -> bool:
        """Whether ``apply`` sharpens each batch (``usm`` on and ``usm_on_load`` off)."""
        return self.params.usm and not self.params.usm_on_load

    def prepare_images(self, images: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
        """The training images (name, HxWx3 uint8) as the batches must be cut from: with ``usm``
        and ``usm_on_load`` on, each whole image USM-sharpened (``usm_sharp_images``, OpenCV,
        rounded to uint8), else unchanged. Call once, before cutting crops: ``apply`` then does
        not sharpen, the crops it gets are the (sharpened) target. USM commutes with cropping
        except within ``usm_radius // 2`` px of a crop border (here the filter sees the real
        neighbourhood instead of reflected pixels) and with horizontal flips (symmetric kernel
        and borders). Not idempotent: do not call it twice on the same images."""
        p = self.params
        if not (p.usm and p.usm_on_load):
            return list(images)
        return usm_sharp_images(images, p.usm_radius, p.usm_weight, p.usm_threshold)

    # ---- randomness ----------------------------------------------------------------------
    def _stage(self, key: str, sfx: str):
        """Parameter ``key`` of stage 1 (``sfx`` "") or stage 2 ("2")."""
        return getattr(self.params, key + sfx)

    def _kernel_params(self, n, g, sfx):
        return sample_kernel_params(n, g, self._stage("kernel_list", sfx), self._stage("kernel_prob", sfx),
                                    sigma_range=self._stage("blur_sigma", sfx),
                                    betag_range=self._stage("betag_range", sfx),
                                    betap_range=self._stage("betap_range", sfx),
                                    sinc_prob=self._stage("sinc_prob", sfx))

    def _noise_params(self, n, g, sfx):
        u = torch.rand(n, 4, generator=g, device=g.device, dtype=torch.float64).unbind(1)
        s_lo, s_hi = (float(v) for v in self._stage("noise_range", sfx))
        p_lo, p_hi = (float(v) for v in self._stage("poisson_scale_range", sfx))
        return {"gaussian": u[0] < self._stage("gaussian_noise_prob", sfx),
                "sigma": (s_lo + (s_hi - s_lo) * u[1]).float(),
                "poisson_scale": (p_lo + (p_hi - p_lo) * u[2]).float(),
                "gray": u[3] < self._stage("gray_noise_prob", sfx)}

    def _resize_params(self, u_type, u_scale, u_mode, sfx):
        probs = self._stage("resize_prob", sfx)
        lo, hi = (float(v) for v in self._stage("resize_range", sfx))
        cdf = np.cumsum(probs) / np.sum(probs)
        kind = UPDOWN[min(int(np.searchsorted(cdf, u_type, side="right")), 2)]
        s = 1 + (hi - 1) * u_scale if kind == "up" else lo + (1 - lo) * u_scale if kind == "down" else 1.0
        return {"type": kind, "scale": float(s), "mode": self._mode(u_mode)}

    def _mode(self, u):
        modes = self.params.resize_modes
        return modes[min(int(u * len(modes)), len(modes) - 1)]

    def sample_params(self, n: int, g: torch.Generator) -> dict:
        """Every random choice for a batch of n, drawn from g on g.device (a fixed number of draws).

        Per batch (Python values): ``resize1`` / ``resize2`` = {"type": up|down|keep, "scale",
        "mode"}, ``final_mode`` (mode of the resize to the LR size), ``final_order``
        ("resize_sinc_first" | "jpeg_first"), ``seed`` (for the noise realisations).
        Per sample ((n,) tensors on g.device): ``kernel1`` / ``kernel2`` (dicts, see
        ``srcore.degrade.kernels.sample_kernel_params``), ``blur2`` (bool), ``noise1`` / ``noise2`` =
        {"gaussian" (bool; else Poisson), "sigma" (levels), "poisson_scale", "gray" (bool)},
        ``jpeg1`` / ``jpeg2`` (int64 qualities), ``final_sinc`` = {"on", "size", "omega"},
        ``crop`` ((n, 2) uniforms in [0, 1) for the crop's top and left).
        """
        p = self.params
        u = torch.rand(8, generator=g, device=g.device, dtype=torch.float64).tolist()
        k1 = self._kernel_params(n, g, "")
        noise1 = self._noise_params(n, g, "")
        jpeg1 = torch.randint(int(p.jpeg_range[0]), int(p.jpeg_range[1]) + 1, (n,), generator=g, device=g.device)
        blur2 = torch.rand(n, generator=g, device=g.device, dtype=torch.float64) < p.second_blur_prob
        k2 = self._kernel_params(n, g, "2")
        noise2 = self._noise_params(n, g, "2")
        jpeg2 = torch.randint(int(p.jpeg_range2[0]), int(p.jpeg_range2[1]) + 1, (n,), generator=g, device=g.device)
        final = sample_final_sinc_params(n, g, p.final_sinc_prob)
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
        W // scale)), LR in 8-bit levels; no crop (see ``paired_crop``).

        ``params`` (``sample_params``) stay on the host: the per-sample tensors are copied to
        the images' device once, without waiting, and every choice the host must make (sizes,
        modes, order) is a per-batch Python value, so nothing here reads the device."""
        x = self._check(hr)
        n, _, h, w = x.shape
        if params["n"] != n:
            raise ValueError(f"params were drawn for {params['n']} samples, the batch has {n}")
        p, dev, be = self.params, x.device, self._backend(x)
        d = params_to(params, dev)
        gen = noise_generator(dev, params["seed"])
        if self.usm_per_batch:
            target = usm_sharp(x, p.usm_radius, p.usm_weight, p.usm_threshold, be)
        else:
            target = x  # no USM, or already sharpened whole by prepare_images

        # stage 1
        out = filter2d(target, kernels_from_params(d["kernel1"], 21), be)
        out = self._random_resize(out, (h, w), params["resize1"], None, be)
        out = add_noise(out, d["noise1"], gen, be)
        out = jpeg_compress(out, d["jpeg1"], be)

        # stage 2: the blur is on or off per sample (off: the identity kernel, picked by where)
        k2 = torch.where(d["blur2"][:, None, None], kernels_from_params(d["kernel2"], 21), pulse_kernels(n, 21, dev))
        out = filter2d(out, k2, be)
        out = self._random_resize(out, (h, w), params["resize2"], self.scale, be)
        out = add_noise(out, d["noise2"], gen, be)
        lr_size = (h // self.scale, w // self.scale)
        sinc = final_sinc_kernels(d["final_sinc"], 21)
        if params["final_order"] == "resize_sinc_first":
            out = filter2d(resize(out, size=lr_size, mode=params["final_mode"], backend=be), sinc, be)
            out = jpeg_compress(out.clamp(0, 1), d["jpeg2"], be)
        else:
            out = jpeg_compress(out.clamp(0, 1), d["jpeg2"], be)
            out = filter2d(resize(out, size=lr_size, mode=params["final_mode"], backend=be), sinc, be)
        return target, quantize(out)

    def _random_resize(self, x: torch.Tensor, hr_size: tuple[int, int], r: dict, divisor: int | None, be: str
                       ) -> torch.Tensor:
        """Stage 1 (``divisor`` None): F.interpolate by ``scale_factor`` r["scale"], as the
        official code; stage 2: to ``int(H / divisor * s)`` x ``int(W / divisor * s)``. With
        ``resize_bucket`` b > 1 the output size is rounded to a multiple of b (at least b), so a
        compiled pipeline sees a bounded set of shapes; the resampling then maps by in / out size."""
        b, s = self.params.resize_bucket, r["scale"]
        if divisor is None:
            if b == 1:
                return resize(x, scale_factor=s, mode=r["mode"], backend=be)
            size = tuple(math.floor(float(v) * s) for v in x.shape[-2:])  # F.interpolate's size
        else:
            size = tuple(int(v / divisor * s) for v in hr_size)
            if b == 1:
                return resize(x, size=size, mode=r["mode"], backend=be)
        return resize(x, size=tuple(bucketed(v, b) for v in size), mode=r["mode"], backend=be)

    def _resize_plan(self, in_size: tuple[int, int], hr_size: tuple[int, int], r: dict, divisor: int | None
                     ) -> tuple[tuple, tuple[int, int]]:
        """What ``_random_resize`` does to an image of ``in_size``, told from the host's values:
        (a key equal for equal calls -- ("id",) where it returns its input --, the output size)."""
        b, s, mode = self.params.resize_bucket, r["scale"], r["mode"]
        if divisor is None:
            size = tuple(math.floor(float(v) * s) for v in in_size)
            if b == 1:
                return (("id",), tuple(in_size)) if s == 1 else (("scale", s, mode), size)
        else:
            size = tuple(int(v / divisor * s) for v in hr_size)
        if b > 1:
            size = tuple(bucketed(v, b) for v in size)
        if size == tuple(in_size):  # resize returns its input
            return ("id",), size
        return ("size", size, mode), tuple(max(1, v) for v in size)

    def _backend(self, x: torch.Tensor) -> str:
        if self.params.backend == "cv2" and x.device.type != "cpu":
            raise ValueError(f"backend='cv2' needs CPU tensors, the batch is on {x.device}")
        return self.params.backend

    def paired_crop(self, hr_target: torch.Tensor, lr: torch.Tensor, params: dict, crop: Crop | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut HR ``gt_patch`` / LR ``gt_patch // scale`` patches at ``crop``, or, without one, at
        each sample's own position in ``params``."""
        if self.gt_patch is None:
            return hr_target, lr
        lq = self.gt_patch // self.scale
        h, w = lr.shape[-2:]
        if h < lq or w < lq:
            raise ValueError(f"LR {h}x{w} is smaller than the LR patch {lq}")
        if crop is None:
            u = params["crop"].to("cpu")
            crop = Crop((u[:, 0] * (h - lq + 1)).long().clamp_max(h - lq).tolist(),
                        (u[:, 1] * (w - lq + 1)).long().clamp_max(w - lq).tolist())
        return crop_pairs(hr_target, lr, crop.tops, crop.lefts, lq, self.scale)

    def __call__(self, hr: torch.Tensor, g: torch.Generator, crop: Crop | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) HR in [0, 1], H, W >= gt_patch -> (hr_target (N, 3, gt_patch, gt_patch),
        lr (N, 3, gt_patch // scale, gt_patch // scale)); without gt_patch, the full-size pair.
        ``crop``: where to cut (else each sample's drawn position); the draws are the same."""
        x = self._check(hr)
        params = self.sample_params(x.shape[0], g)
        return self.paired_crop(*self.apply(x, params), params, crop)

    def many(self, hrs, g: torch.Generator, views: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[degraded_views(self, hr, g, views) for hr in hrs]`` (``Degradation.many``): the same
        draws in the same order and the same per-sample results. On the torch backend (a GPU's),
        batches of one shape are degraded together, each kernel, blur and parameter copy once
        for all, the batches' differently-sized middles in padded groups
        (``srcore.degrade.realesrgan_many``; ``group_px`` sets their size, None: per device);
        on the OpenCV path, one call per batch."""
        hrs = list(hrs)
        if (not hrs or use_cv2(hrs[0], self.params.backend)
                or any(hr.shape != hrs[0].shape or hr.dtype != hrs[0].dtype or hr.device != hrs[0].device
                       for hr in hrs)
                or type(self).__call__ is not RealESRGANDegradation.__call__
                or type(self).views is not Degradation.views):
            return super().many(hrs, g, views)
        from srcore.degrade.realesrgan_many import degrade_many
        return degrade_many(self, hrs, g, views, self.group_px)

    def _check(self, hr: torch.Tensor) -> torch.Tensor:
        if hr.dim() != 4 or hr.shape[1] != 3:
            raise ValueError(f"expected an RGB batch (N, 3, H, W), got {tuple(hr.shape)}")
        h, w = hr.shape[-2:]
        if self.gt_patch is not None and (h < self.gt_patch or w < self.gt_patch):
            raise ValueError(f"HR {h}x{w} is smaller than gt_patch={self.gt_patch}")
        if h < self.scale or w < self.scale:
            raise ValueError(f"HR {h}x{w} is smaller than the scale {self.scale}")
        return hr if hr.is_floating_point() else hr.float() / 255
