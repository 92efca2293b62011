"""The paper's figures from a sweep's statistics (``analysis.stats.ablation_stats``):

- ``bars.png/.pdf``: Figure-1 style grouped bars, PSNR per test degradation for every setting
  (e.g. SRResNet, SRResNet + dropout, RRDB, RRDB + dropout), error bars = std over seeds;
- ``gain_vs_p``: Δ PSNR vs the no-dropout baseline as a function of dropout.p, one line per
  test degradation (when p is swept);
- ``gain_by_position``: Δ PSNR per dropout position, grouped by test degradation (when the
  position is swept), with the 95% intervals (analysis.stats).
Plotted for the pooled ``average`` set when there are several test sets, else the one set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.outfiles import save_figure_file
from analysis.stats import AVERAGE, STAT_COLUMNS, TEST_DEGRADATION, TEST_SET
from srcore.evaluation import TEST_DEGRADATIONS


def pyplot():
    """matplotlib.pyplot on the file-only backend (no display on clusters and CI)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _one_set(stats: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    sets = [s for s in stats[TEST_SET].dropna().unique()]
    name = AVERAGE if AVERAGE in sets else sets[0]
    return stats[stats[TEST_SET] == name], name


def _label(row, keys) -> str:
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys)


def save_figure(fig, *paths: Path) -> list[Path]:
    """Write ``fig`` to each path (format from the suffix; atomically: ``analysis.outfiles``),
    then close it."""
    try:
        for p in paths:
            save_figure_file(fig, p, dpi=150, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return list(paths)


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    return save_figure(fig, out_dir / f"{name}.png", out_dir / f"{name}.pdf")


def _grouped_bars(ax, degs: list[str], groups: list[tuple[str, pd.DataFrame]], value: str, err) -> None:
    """One bar per group at each test degradation; ``err(rows)`` gives the error bars."""
    x = np.arange(len(degs))
    width = 0.8 / max(1, len(groups))
    for i, (label, rows) in enumerate(groups):
        rows = rows.reindex(degs)
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, rows[value], width, yerr=err(rows), capsize=2, label=label)
    ax.set_xticks(x, degs, rotation=30, ha="right")


def grouped_bars(stats: pd.DataFrame, out_dir: Path, metric: str = "psnr") -> list[Path]:
    plt = pyplot()
    data, set_name = _one_set(stats.dropna(subset=["mean"]))
    keys = [c for c in stats.columns if c not in STAT_COLUMNS]
    settings = data[keys].drop_duplicates()
    degs = [d for d in TEST_DEGRADATIONS if d in set(data[TEST_DEGRADATION])]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(degs)), 3.5))
    groups = [(_label(setting, keys),
               data[np.logical_and.reduce([data[k].astype(str) == str(setting[k]) for k in keys])]
               .set_index(TEST_DEGRADATION)) for _, setting in settings.iterrows()]
    _grouped_bars(ax, degs, groups, "mean", lambda rows: rows["std"].fillna(0))
    lo = data["mean"].min()
    ax.set_ylim(lo - 1.0, data["mean"].max() + 0.5)
    ax.set_ylabel(f"{metric.upper()} (dB)")
    ax.set_title(f"{metric.upper()} per test degradation ({set_name})")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out_dir, "bars")


def gain_vs_p(stats: pd.DataFrame, out_dir: Path, metric: str = "psnr") -> list[Path]:
    if "dropout.p" not in stats.columns:
        return []
    plt = pyplot()
    data, set_name = _one_set(stats)
    data = data.assign(p=pd.to_numeric(data["dropout.p"], errors="coerce"))
    data.loc[data["baseline"].astype(bool), "delta"] = 0.0
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for deg in [d for d in TEST_DEGRADATIONS if d in set(data[TEST_DEGRADATION])]:
        rows = data[data[TEST_DEGRADATION] == deg].sort_values("p")
        ax.plot(rows["p"], rows["delta"], marker="o", label=deg)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("dropout p")
    ax.set_ylabel(f"Δ {metric.upper()} vs no dropout (dB)")
    ax.set_title(f"Gain vs p ({set_name})")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out_dir, "gain_vs_p")


def gain_by_position(stats: pd.DataFrame, out_dir: Path, metric: str = "psnr") -> list[Path]:
    if "dropout.position" not in stats.columns:
        return []
    plt = pyplot()
    data, set_name = _one_set(stats)
    data = data[~data["baseline"].astype(bool)].dropna(subset=["delta"])
    if data.empty:
        return []
    positions = list(dict.fromkeys(data["dropout.position"].astype(str)))
    degs = [d for d in TEST_DEGRADATIONS if d in set(data[TEST_DEGRADATION])]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(degs)), 3.5))

    def interval(rows):
        if not rows["ci_low"].notna().any():
            return None
        return np.vstack([rows["delta"] - rows["ci_low"], rows["ci_high"] - rows["delta"]]).clip(min=0)

    groups = [(pos, data[data["dropout.position"].astype(str) == pos].groupby(TEST_DEGRADATION).first())
              for pos in positions]
    _grouped_bars(ax, degs, groups, "delta", interval)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(f"Δ {metric.upper()} vs no dropout (dB)")
    ax.set_title(f"Gain by dropout position ({set_name}; bars: 95% CI)")
    ax.legend(fontsize=7, ncol=3)
    return _save(fig, out_dir, "gain_by_position")


def write_figures(stats: pd.DataFrame, out_dir: Path, metric: str = "psnr") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    if stats["mean"].notna().sum() == 0:
        return []
    return [*grouped_bars(stats, out_dir, metric), *gain_vs_p(stats, out_dir, metric),
            *gain_by_position(stats, out_dir, metric)]
