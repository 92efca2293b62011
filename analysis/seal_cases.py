"""SEAL's 100 degradation cases as named columns, and where a setting gains over its baseline.

``degradation_center_100.txt`` holds one parameter string per case (line i+1 is ``deg_<i>``,
after ``<line> <id> <id>/``), in one of two formats, decoded here as SEAL's generator reads
them (XPixelGroup/SEAL@64b81a6, ``scripts/data_generation/{realesrgan,bsrgan}.py``):

- Real-ESRGAN type (54 cases), ``_``-separated: two orders of blur -> resize -> noise (the
  first also JPEG), then a final resize to 1/4 with an optional sinc filter and JPEG in one
  of four orders;
- BSRGAN type (46 cases), ``|``-separated: an optional x1/2 pre-downsampling, then seven
  operations in the shuffled order given (two blurs, two downsamplings, Gaussian noise,
  JPEG, a camera pipeline SEAL never applies), then a final JPEG.

Both families fill the same per-stage columns where they share a stage (``blur1_*``,
``blur2_*``, ``noise1_*``, ``jpeg1_quality``, ``final_jpeg_quality``); the rest are
family-specific (``resize1_*`` ... for Real-ESRGAN, ``down1_*`` ... for BSRGAN) and NaN /
None elsewhere. Three summary columns give the dominant factors on one scale for both:
``max_blur_sigma`` (largest Gaussian-type kernel std, in pixels of the image it blurs; 0 if
none; sinc filters are flagged in ``sinc``), ``max_noise_sigma`` (largest noise std in 8-bit
levels; Poisson noise at mid-grey) and ``min_jpeg_quality`` (the strongest compression).
``gain_figure`` plots a per-case gain against them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.figures import pyplot, save_figure
from srcore.evaluation.seal import DEGRADATIONS_TXT, NUM_CASES

REALESRGAN_KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
REALESRGAN_FINAL = ("resize+sinc > jpeg", "jpeg > resize+sinc", "resize+sinc", "resize")
CV2_INTERPOLATION = {0: "nearest", 1: "bilinear", 2: "bicubic", 3: "area", 4: "lanczos"}
BSRGAN_OPS = ("blur1", "blur2", "down2", "down3", "noise1", "jpeg1", "camera")
# BasicSR's Poisson noise on an 8-bit image (256 levels): std = scale * 255 * sqrt(x / 256) at
# intensity x in [0, 1]; at mid-grey that is scale * 11.27 levels.
POISSON_STD_AT_MID_GREY = 255 * math.sqrt(0.5 / 256)
BSRGAN_CORRELATED_NOISE_LEVEL = 25.0  # BSRGAN's noise_level2: the scale of its correlated noise
FACTORS = (("max_noise_sigma", "noise std (8-bit levels)"), ("max_blur_sigma", "blur kernel std (px; 0: none or sinc)"),
           ("min_jpeg_quality", "JPEG quality (lowest)"))


def read_degradation_strings(path: str | Path) -> list[str]:
    """The parameter string of each case, in case order."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    return [ln.split("/", 1)[1] for ln in lines]


def _realesrgan_order(t: list[str], k: int) -> dict:
    """One order of Real-ESRGAN's chain; ``t`` starts at its ``FisrtOrder`` / ``SecondOrder`` token."""
    out: dict = {}
    kind = None if t[2] == "0" else "sinc" if t[3] == "1" else REALESRGAN_KERNELS[int(t[5])]
    out[f"blur{k}_kernel"] = kind
    out[f"blur{k}_size"] = int(t[4]) if kind else None
    gaussian = kind not in (None, "sinc")
    iso = gaussian and kind.endswith("iso") and not kind.endswith("aniso")
    sx = float(t[6]) if gaussian else math.nan
    out[f"blur{k}_sigma_x"] = sx
    out[f"blur{k}_sigma_y"] = sx if iso else float(t[7]) if gaussian else math.nan  # iso kernels use sigma_x
    out[f"blur{k}_rotation"] = 0.0 if iso else float(t[10]) if gaussian else math.nan
    # BasicSR draws beta between these values and 1: the string holds the range's far end.
    out[f"blur{k}_beta_g"] = float(t[8]) if kind and kind.startswith("generalized") else math.nan
    out[f"blur{k}_beta_p"] = float(t[9]) if kind and kind.startswith("plateau") else math.nan
    out[f"blur{k}_omega_c"] = float(t[11]) if kind == "sinc" else math.nan
    resized = t[13] == "1"  # without the flag SEAL resizes by 0.25, bicubic
    out[f"resize{k}_scale"] = float(t[14]) if resized else 0.25
    out[f"resize{k}_mode"] = t[15] if resized else "bicubic"
    noise = None if t[17] == "0" else "gaussian" if t[19] == "1" else "poisson"
    out[f"noise{k}"] = noise
    out[f"noise{k}_gray"] = (t[18] == "1") if noise else None
    out[f"noise{k}_poisson_scale"] = float(t[21]) if noise == "poisson" else math.nan
    out[f"noise{k}_sigma"] = (float(t[20]) if noise == "gaussian" else
                              float(t[21]) * POISSON_STD_AT_MID_GREY if noise == "poisson" else math.nan)
    return out


def parse_realesrgan(s: str) -> dict:
    """Named parameters of a Real-ESRGAN-type string (``FisrtOrder_Blur_...``)."""
    t = s.split("_")
    if t[0] != "FisrtOrder" or t[25] != "SecondOrder" or t[47] != "FinalOrder":
        raise ValueError(f"not a SEAL Real-ESRGAN-type string: {s[:60]!r}...")
    out = {"family": "realesrgan", **_realesrgan_order(t[0:25], 1), **_realesrgan_order(t[25:47], 2)}
    out["jpeg1_quality"] = float(t[24]) if t[23] == "1" else math.nan
    final = int(t[49])
    sinc = t[50] == "1" and final < 3  # without the flag the "sinc" is a unit pulse
    out["final_order"] = REALESRGAN_FINAL[final] if sinc else REALESRGAN_FINAL[final].replace("+sinc", "")
    out["final_sinc_size"] = int(t[51]) if sinc else None
    out["final_sinc_omega_c"] = float(t[52]) if sinc else math.nan
    out["final_resize_mode"] = t[54]
    out["final_jpeg_quality"] = float(t[56]) if final < 2 else math.nan
    ran = {"blur1": out["blur1_kernel"], "noise1": out["noise1"], "jpeg1": not math.isnan(out["jpeg1_quality"]),
           "blur2": out["blur2_kernel"], "noise2": out["noise2"]}
    stages = ["blur1", "resize1", "noise1", "jpeg1", "blur2", "resize2", "noise2"]
    out["order"] = " > ".join([st for st in stages if ran.get(st, True)] + [out["final_order"]])
    out["sinc"] = "sinc" in (out["blur1_kernel"], out["blur2_kernel"]) or out["final_sinc_size"] is not None
    return out


def _value(tokens: list[str], key: str) -> float:
    return float(tokens[tokens.index(key) + 1])


def _bsrgan_blur(tokens: list[str], k: int) -> dict:
    aniso = _value(tokens, "rnum") < 0.5  # else isotropic with std l3
    theta = _value(tokens, "theta")
    # l1, l2 are the covariance's eigenvalues (variances), hence the square roots.
    sx = math.sqrt(_value(tokens, "l1")) if aniso else _value(tokens, "l3")
    sy = math.sqrt(_value(tokens, "l2")) if aniso else sx
    return {f"blur{k}_kernel": "aniso" if aniso else "iso", f"blur{k}_size": int(_value(tokens, "ksize")),
            f"blur{k}_sigma_x": sx, f"blur{k}_sigma_y": sy, f"blur{k}_rotation": theta if aniso else 0.0}


def _bsrgan_noise(tokens: list[str]) -> dict:
    rnum, level = _value(tokens, "rnum"), _value(tokens, "noiselevel")
    if rnum > 0.6 or rnum < 0.4:
        return {"noise1": "gaussian", "noise1_gray": rnum < 0.4, "noise1_sigma": level}
    # Channel-correlated: covariance L^2 U^T D U with U orthogonal, so the mean per-channel
    # variance is L^2 mean(diag D); the noiselevel field is unused.
    d = [float(v) for v in tokens[tokens.index("D") + 1: tokens.index("U")]]
    return {"noise1": "correlated", "noise1_gray": False,
            "noise1_sigma": BSRGAN_CORRELATED_NOISE_LEVEL * math.sqrt(np.mean([d[0], d[4], d[8]]))}


def parse_bsrgan(s: str) -> dict:
    """Named parameters of a BSRGAN-type string (``shuffleorder_[...]|dppre_...|dp0_...``)."""
    parts = [p.strip().split("_") for p in s.split("|")]
    fields = ["shuffleorder", "dppre", "dp0", "dp1", "dp2", "dp3", "dp4", "dp5", "dp7"]
    if [p[0] for p in parts] != fields:
        raise ValueError(f"not a SEAL BSRGAN-type string: {s[:60]!r}...")
    pre, dp0, dp1, dp2, dp3, dp4, dp5, dp7 = parts[1:]
    out = {"family": "bsrgan", **_bsrgan_blur(dp0, 1), **_bsrgan_blur(dp1, 2), **_bsrgan_noise(dp4)}
    down1 = _value(pre, "rnum1") < 0.25
    out["down1_mode"] = (None if not down1 else CV2_INTERPOLATION[int(_value(pre, "interptype"))]
                         if _value(pre, "rnum2") < 0.5 else "matlab_bicubic")
    by_resize = _value(dp2, "rnum") < 0.75  # else Gaussian blur + nearest (every sf-th pixel)
    out["down2"] = "resize" if by_resize else "blur+nearest"
    out["down2_scale"] = 1 / _value(dp2, "sf1") if by_resize else 1 / (2 if down1 else 4)
    out["down2_mode"] = CV2_INTERPOLATION[int(_value(dp2, "interptype"))] if by_resize else "nearest"
    out["down2_blur_sigma"] = math.nan if by_resize else _value(dp2, "blursigma")
    out["down3_mode"] = CV2_INTERPOLATION[int(_value(dp3, "interptype"))]
    out["jpeg1_quality"] = float(int(_value(dp5, "jpegfactor"))) if _value(dp5, "rnum") < 0.9 else math.nan
    out["final_jpeg_quality"] = float(int(_value(dp7, "jpegfactor")))
    shuffle = [BSRGAN_OPS[int(i)] for i in parts[0][1].strip("[]").split(", ")]
    ran = [op for op in shuffle if op != "camera" and not (op == "jpeg1" and math.isnan(out["jpeg1_quality"]))]
    out["order"] = " > ".join((["down1"] if down1 else []) + ran + ["final_jpeg"])
    out["sinc"] = False
    return out


def parse_degradation(s: str) -> dict:
    """Named parameters of one SEAL case, with the dominant-factor summary columns."""
    out = parse_bsrgan(s) if s.startswith("shuffleorder") else parse_realesrgan(s)
    blurs = [out.get(c, math.nan) for c in ("blur1_sigma_x", "blur1_sigma_y", "blur2_sigma_x", "blur2_sigma_y",
                                            "down2_blur_sigma")]
    out["max_blur_sigma"] = float(np.nanmax(blurs)) if not np.isnan(blurs).all() else 0.0
    noises = [out.get(c, math.nan) for c in ("noise1_sigma", "noise2_sigma")]
    out["max_noise_sigma"] = float(np.nanmax(noises)) if not np.isnan(noises).all() else 0.0
    jpegs = [out.get(c, math.nan) for c in ("jpeg1_quality", "final_jpeg_quality")]
    out["min_jpeg_quality"] = float(np.nanmin(jpegs)) if not np.isnan(jpegs).all() else math.nan
    return out


def case_frame(seal_root: str | Path) -> pd.DataFrame:
    """One row per SEAL case (index ``case`` = i of ``deg_<i>``), every parameter named."""
    strings = read_degradation_strings(Path(seal_root) / DEGRADATIONS_TXT)
    if len(strings) != NUM_CASES:
        raise ValueError(f"{Path(seal_root) / DEGRADATIONS_TXT}: {len(strings)} cases, expected {NUM_CASES}")
    frame = pd.DataFrame([parse_degradation(s) for s in strings])
    frame.index.name = "case"
    lead = ["family", "max_blur_sigma", "max_noise_sigma", "min_jpeg_quality", "sinc", "order"]
    return frame[lead + [c for c in frame.columns if c not in lead]]


def gain_figure(cases: pd.DataFrame, gain: pd.Series, path: Path, title: str, ylabel: str = "gain (dB)") -> Path:
    """Per-case ``gain`` (indexed by case) against each dominant factor, one panel each, by
    family, with Spearman's rank correlation in the panel title."""
    plt = pyplot()
    data = cases.join(gain.rename("gain"), how="inner")
    fig, axes = plt.subplots(1, len(FACTORS), figsize=(4.2 * len(FACTORS), 3.6), sharey=True)
    for ax, (col, label) in zip(axes, FACTORS):
        for family, rows in data.groupby("family"):
            ax.scatter(rows[col], rows["gain"], s=14, label=family, alpha=0.8)
        ax.axhline(0.0, color="grey", lw=0.8)
        rho = data[[col, "gain"]].dropna().corr(method="spearman").iloc[0, 1]
        ax.set_xlabel(label)
        ax.set_title(f"Spearman rho {rho:+.2f}", fontsize=9)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return path
