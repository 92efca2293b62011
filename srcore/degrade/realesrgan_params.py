"""The parameters of the Real-ESRGAN degradation and their pre-flight validation.

``RealESRGANParams`` names every parameter and has NO defaults: the paper's values live in
``conf/degradation/realesrgan.yaml`` only (the job passes that file's keys, minus ``name`` and
``gt_size``, plus ``scale`` and ``gt_patch``). ``validate_params`` checks a complete set and
raises ValueError naming the key, its value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from srcore.degrade.cpu import BACKENDS
from srcore.degrade.kernels import KERNEL_TYPES

KNOWN_RESIZE_MODES = ("area", "bilinear", "bicubic", "nearest", "nearest-exact")


@dataclasses.dataclass(frozen=True)
class RealESRGANParams:
    """Every setting of the two-stage pipeline (``srcore.degrade.realesrgan``); the suffix 2 marks
    stage 2. Lists are stored as tuples."""
    scale: int
    gt_patch: int | None         # HR patch cut after degrading (None: the full-size pair)
    usm: bool                    # unsharp-mask the GT (input and target) before degrading
    usm_radius: int
    usm_weight: float
    usm_threshold: float         # levels on the 0..255 scale
    usm_on_load: bool            # sharpen whole training images once (prepare_images), not every batch
    # stage 1
    kernel_list: tuple[str, ...]
    kernel_prob: tuple[float, ...]
    blur_sigma: tuple[float, float]
    betag_range: tuple[float, float]   # generalized Gaussian shape
    betap_range: tuple[float, float]   # plateau shape
    sinc_prob: float
    resize_prob: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float   # else Poisson
    noise_range: tuple[float, float]  # Gaussian sigma, levels of 255
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[int, int]
    # stage 2
    second_blur_prob: float
    kernel_list2: tuple[str, ...]
    kernel_prob2: tuple[float, ...]
    blur_sigma2: tuple[float, float]
    betag_range2: tuple[float, float]
    betap_range2: tuple[float, float]
    sinc_prob2: float
    resize_prob2: tuple[float, float, float]
    resize_range2: tuple[float, float]
    gaussian_noise_prob2: float
    noise_range2: tuple[float, float]
    poisson_scale_range2: tuple[float, float]
    gray_noise_prob2: float
    jpeg_range2: tuple[int, int]
    # final steps
    final_sinc_prob: float
    resize_modes: tuple[str, ...]
    resize_bucket: int           # random-resize output sizes rounded to multiples of this (1: exact)
    backend: str                 # auto | torch | cv2 (srcore.degrade.cpu)

    @classmethod
    def from_dict(cls, params: dict) -> RealESRGANParams:
        """Validated parameters from plain values (lists become tuples)."""
        validate_params(params)
        plain = {k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in params.items()}
        gt = plain["gt_patch"]
        return cls(**{**plain, "scale": int(plain["scale"]), "gt_patch": None if gt is None else int(gt),
                      "usm": bool(plain["usm"]), "usm_on_load": bool(plain["usm_on_load"])})


PARAM_NAMES = tuple(f.name for f in dataclasses.fields(RealESRGANParams))


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


def validate_params(params: dict) -> None:
    """Pre-flight check of a complete set of Real-ESRGAN parameters (``PARAM_NAMES``); raises
    ValueError naming the key, its value and what is allowed. Unknown or missing keys are errors."""
    unknown = [k for k in params if k not in PARAM_NAMES]
    if unknown:
        raise ValueError(f"degradation.{unknown[0]} is not a parameter of the realesrgan degradation; "
                         f"allowed: {', '.join(PARAM_NAMES)}")
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
        raise ValueError(f"degradation.{missing[0]} is missing: the realesrgan degradation needs every one of "
                         f"{', '.join(PARAM_NAMES)} (conf/degradation/realesrgan.yaml has the paper's values)")
    _check_geometry_and_usm(params)
    for sfx in ("", "2"):
        _check_stage(params, sfx)
    _check_prob("second_blur_prob", params["second_blur_prob"])
    _check_prob("final_sinc_prob", params["final_sinc_prob"])
    rb = params["resize_bucket"]
    if isinstance(rb, bool) or not isinstance(rb, (int, np.integer)) or not 1 <= rb <= 64:
        _fail("resize_bucket", rb, "must be an integer in [1, 64] (1: the exact sizes of the official code)")
    if params["backend"] not in BACKENDS:
        _fail("backend", params["backend"], f"must be one of {', '.join(BACKENDS)} (cv2: CPU only)")
    modes = params["resize_modes"]
    if isinstance(modes, (str, bytes)) or not isinstance(modes, Sequence) or len(modes) == 0 or \
            any(m not in KNOWN_RESIZE_MODES for m in modes):
        _fail("resize_modes", modes, f"must be a non-empty list from {', '.join(KNOWN_RESIZE_MODES)}")


def _check_geometry_and_usm(p: dict) -> None:
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


def _check_stage(p: dict, sfx: str) -> None:
    """The blur, resize, noise and JPEG settings of stage 1 (``sfx`` "") or stage 2 ("2")."""
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
