"""SEAL's systematic metrics (Zhang et al., ICLR 2024): a model's per-case scores measured
against two reference lines.

SEAL scores a model on C representative degradations ("cases"). Per case i the model's score
M_i is the mean over the case's images (PSNR or SSIM on Y, crop 0); two reference models
trained on that one degradation give the acceptance line A_i (FSRCNN) and the excellence line
E_i (SRResNet). Cases where the lines nearly coincide (E_i - A_i below ``LINE_MIN_GAP``: 0.1 dB
PSNR, 0.01 SSIM) say nothing about a model and are dropped (93 of 100 remain for PSNR on
Set14-SE, 67 for SSIM). On the remaining cases

    RPR_i = sigmoid((M_i - A_i) / (E_i - A_i))     (0.5 on the acceptance line, 0.73 on E)
    AR    = share of cases with M_i >= A_i
    RPR_A = mean RPR_i over the accepted cases, RPR_U over the others (0 for an empty group,
            as SEAL reports it), RPR_I = Q3 - Q1 of RPR_i (linear-interpolated quartiles)

and the plain mean ``S`` (PSNR-S) runs over all C cases, filter or not.

With the filter this reproduces SEAL's published Set14-SE table (its README) for all seven
models from their ``metrics/model.csv``. SEAL's own ``AR_RPR_on_psnr.csv`` / ``_ssim.csv`` are
the *unfiltered* computation (``seal_stats(..., min_gap=None)`` reproduces them): their
``calculate_AR_RPR.py`` filters only ``if iqa == 'PSNR'`` / ``'SSIM'`` while it is called with
``'psnr'`` / ``'ssim'``, so the filter never ran.

Plain numpy and the csv module: the result tables can recompute a summary from stored
per-case means without torch or pandas.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

# Metric name here -> the suffix of SEAL's csv columns (``fsrcnn_psnr``, ``BSRNet_ssim``, ...).
CSV_METRIC = {"psnr_y": "psnr", "ssim_y": "ssim"}
METRICS = tuple(CSV_METRIC)
LINE_MIN_GAP = {"psnr_y": 0.1, "ssim_y": 0.01}
STATS = ("S", "AR", "RPR_I", "RPR_A", "RPR_U")
ACCEPTANCE_MODEL, EXCELLENCE_MODEL = "fsrcnn", "srresnet"

# Row labels of SEAL's published table for the models in its model.csv.
PAPER_NAMES = {
    "SRResNet": "SRResNet", "DASR": "DASR", "BSRNet": "BSRNet", "RealESRNet_x4plus": "RealESRNet",
    "Real-RRDB_withdropout": "RDSR", "GDRealESRNetx4plus": "RealESRNet-GD", "swinir-l": "SwinIR",
}


class Lines(NamedTuple):
    """The two reference lines of one metric, one value per case."""
    acceptance: np.ndarray
    excellence: np.ndarray

    def take(self, cases: Sequence[int]) -> Lines:
        idx = np.asarray(cases, dtype=int)
        return Lines(self.acceptance[idx], self.excellence[idx])


def _read_columns(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of one of SEAL's csv files (pandas ``to_csv`` output: the first column is the
    case index, 0..C-1 in order) as float arrays. ``utf-8-sig`` drops the BOM of line.csv."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        header, *rows = list(csv.reader(f))
    index = [int(r[0]) for r in rows]
    if index != list(range(len(rows))):
        raise ValueError(f"{path}: expected cases 0..{len(rows) - 1} in order in the first column")
    return {name: np.array([float(r[j]) for r in rows]) for j, name in enumerate(header) if j > 0 and name}


def read_lines(path: str | os.PathLike) -> dict[str, Lines]:
    """``{metric: Lines}`` from SEAL's ``metrics/line.csv``."""
    cols = _read_columns(path)
    return {m: Lines(cols[f"{ACCEPTANCE_MODEL}_{s}"], cols[f"{EXCELLENCE_MODEL}_{s}"]) for m, s in CSV_METRIC.items()}


def read_model_scores(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """``{model: {metric: per-case scores}}`` from SEAL's ``metrics/model.csv`` (columns
    ``<model>_<psnr|ssim|lpips|niqe>``; only PSNR and SSIM are kept)."""
    cols = _read_columns(path)
    out: dict[str, dict[str, np.ndarray]] = {}
    for m, s in CSV_METRIC.items():
        for name, values in cols.items():
            if name.endswith(f"_{s}"):
                out.setdefault(name[: -len(s) - 1], {})[m] = values
    return out


def _mean_or_zero(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else 0.0


def seal_stats(scores: Sequence[float], lines: Lines, min_gap: float | None) -> dict[str, float]:
    """``STATS`` of one metric, plus ``cases`` (how many the line filter kept). ``min_gap=None``
    disables the filter (SEAL's published csv files)."""
    m = np.asarray(scores, dtype=np.float64)
    a, e = lines.acceptance, lines.excellence
    if not m.shape == a.shape == e.shape or m.ndim != 1:
        raise ValueError(f"need one score per case: {m.shape} scores for {a.shape} line values")
    keep = np.ones(m.shape, bool) if min_gap is None else (e - a) >= min_gap
    mk, ak, ek = m[keep], a[keep], e[keep]
    rpr = 1.0 / (1.0 + np.exp(-(mk - ak) / (ek - ak)))
    accepted = mk >= ak
    q1, q3 = np.quantile(rpr, [0.25, 0.75]) if rpr.size else (math.nan, math.nan)
    return {"S": float(m.mean()), "AR": float(accepted.mean()) if rpr.size else math.nan, "RPR_I": float(q3 - q1),
            "RPR_A": _mean_or_zero(rpr[accepted]), "RPR_U": _mean_or_zero(rpr[~accepted]), "cases": int(keep.sum())}


def seal_summary(case_means: Mapping[str, Sequence[float]], lines: Mapping[str, Lines],
                 line_filter: bool = True) -> dict[str, float]:
    """Flat ``{"<metric>/<stat>": value}`` for every metric of ``case_means`` (one mean per case,
    in the order of ``lines``): what a job logs, and what a table recomputes from stored means."""
    out = {}
    for metric, scores in case_means.items():
        stats = seal_stats(scores, lines[metric], LINE_MIN_GAP[metric] if line_filter else None)
        out.update({f"{metric}/{k}": v for k, v in stats.items()})
    return out
