"""The paper's figures from a sweep's statistics (``analysis.stats.ablation_stats``):

- ``bars.png/.pdf``: Figure-1 style grouped bars, PSNR per test degradation for every setting
  (e.g. SRResNet, SRResNet + dropout, RRDB, RRDB + dropout), error bars = std over seeds;
- ``gain_vs_p``: Δ PSNR vs the no-dropout baseline as a function of dropout.p, one line per
  test degradation (when p is swept);
- ``gain_by_position``: Δ PSNR per dropout position, grouped by test degradation (when the
  position is swept), with the bootstrap 95% intervals.
Plotted for the pooled ``average`` set when there are several test sets, else the one set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.stats import AVERAGE
from srcore.eval_degradations import TEST_DEGRADATIONS

STAT_COLUMNS = {"set", "degradation", "n", "mean", "std", "baseline", "status", "delta", "ci_low", "ci_high", "best"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _one_set(stats: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    sets = [s for s in stats["set"].dropna().unique()]
    name = AVERAGE if AVERAGE in sets else sets[0]
    return stats[stats["set"] == name], name


def _label(row, keys) -> str:
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys)


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def grouped_bars(stats: pd.DataFrame, out_dir: Path, metric: str = "psnr") -> list[Path]:
    plt = _plt()
    data, set_name = _one_set(stats.dropna(subset=["mean"]))
    keys = [c for c in stats.columns if c not in STAT_COLUMNS]
    settings = data[keys].drop_duplicates()
    degs = [d for d in TEST_DEGRADATIONS if d in set(data["degradation"])]
    x = np.arange(len(degs))
    width = 0.8 / max(1, len(settings))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(degs)), 3.5))
    for i, (_, setting) in enumerate(settings.iterrows()):
        rows = data[np.logical_and.reduce([data[k].astype(str) == str(setting[k]) for k in keys])]
        rows = rows.set_index("degradation").reindex(degs)
        ax.bar(x + (i - (len(settings) - 1) / 2) * width, rows["mean"], width, yerr=rows["std"].fillna(0),
               label=_label(setting, keys), capsize=2)
    lo = data["mean"].min()
    ax.set_ylim(lo - 1.0, data["mean"].max() + 0.5)
    ax.set_xticks(x, degs, rotation=30, ha="right")
    ax.set_ylabel(f"{metric.upper()} (dB)")
    ax.set_title(f"{metric.upper()} per test degradation ({set_name})")
    ax.legend(fontsize=7, ncol=2)
    paths = _save(fig, out_dir, "bars")
    plt.close(fig)
    return paths


def gain_vs_p(stats: pd.DataFrame, out_dir: Path, metric: str = "psnr") -> list[Path]:
    if "dropout.p" not in stats.columns:
        return []
    plt = _plt()
    data, set_name = _one_set(stats)
    data = data.assign(p=pd.to_numeric(data["dropout.p"], errors="coerce"))
    data.loc[data["baseline"].astype(bool), "delta"] = 0.0
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for deg in [d for d in TEST_DEGRADATIONS if d in set(data["degradation"])]:
        rows = data[data["degradation"] == deg].sort_values("p")
        ax.plot(rows["p"], rows["delta"], marker="o", label=deg)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("dropout p")
    ax.set_ylabel(f"Δ {metric.upper()} vs no dropout (dB)")
    ax.set_title(f"Gain vs p ({set_name})")
    ax.legend(fontsize=7, ncol=2)
    paths = _save(fig, out_dir, "gain_vs_p")
    plt.close(fig)
    return paths


def gain_by_position(stats: pd.DataFrame, out_dir: Path, metric: str = "psnr") -> list[Path]:
    if "dropout.position" not in stats.columns:
        return []
    plt = _plt()
    data, set_name = _one_set(stats)
    data = data[~data["baseline"].astype(bool)].dropna(subset=["delta"])
    if data.empty:
        return []
    positions = list(dict.fromkeys(data["dropout.position"].astype(str)))
    degs = [d for d in TEST_DEGRADATIONS if d in set(data["degradation"])]
    x = np.arange(len(degs))
    width = 0.8 / len(positions)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(degs)), 3.5))
    for i, pos in enumerate(positions):
        rows = data[data["dropout.position"].astype(str) == pos].groupby("degradation").first().reindex(degs)
        err = None
        if rows["ci_low"].notna().any():
            err = np.vstack([rows["delta"] - rows["ci_low"], rows["ci_high"] - rows["delta"]]).clip(min=0)
        ax.bar(x + (i - (len(positions) - 1) / 2) * width, rows["delta"], width, yerr=err, capsize=2, label=pos)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, degs, rotation=30, ha="right")
    ax.set_ylabel(f"Δ {metric.upper()} vs no dropout (dB)")
    ax.set_title(f"Gain by dropout position ({set_name}; bars: 95% bootstrap CI)")
    ax.legend(fontsize=7, ncol=3)
    paths = _save(fig, out_dir, "gain_by_position")
    plt.close(fig)
    return paths


def write_figures(stats: pd.DataFrame, out_dir: Path, metric: str = "psnr") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    if stats["mean"].notna().sum() == 0:
        return []
    return [*grouped_bars(stats, out_dir, metric), *gain_vs_p(stats, out_dir, metric),
            *gain_by_position(stats, out_dir, metric)]
