"""Statistics behind the ablation tables: mean ± std over seeds, the change vs the
no-dropout baseline, and a paired per-image bootstrap 95% interval for that change.

Pairing: a setting and its baseline (same context — every swept key except the dropout
keys and the seed — with dropout off) are compared image by image, on the same seed where
both have it: d = PSNR(setting) - PSNR(baseline) for each (seed, image). The interval is
the 2.5/97.5 percentiles of the mean of d over B resamples of those pairs (drawn with
replacement, from a seeded generator, so the table is reproducible).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

DROPOUT_KEYS = ("swept.dropout.position", "swept.dropout.p", "swept.dropout.kind")
SEED_KEY = "swept.seed"
AVERAGE = "average"  # the pseudo test set: all test sets' images together


def is_baseline(runs: pd.DataFrame) -> pd.Series:
    """Runs without dropout: position none, or p = 0 (Dropout with p = 0 is the identity)."""
    off = pd.Series(False, index=runs.index)
    if "swept.dropout.position" in runs:
        off |= runs["swept.dropout.position"].astype(str).eq("none")
    if "swept.dropout.p" in runs:
        off |= pd.to_numeric(runs["swept.dropout.p"], errors="coerce").eq(0)
    return off


def setting_keys(runs: pd.DataFrame) -> list[str]:
    """The swept keys that tell the rows apart (the seed is averaged over, not a row)."""
    swept = [c for c in runs.columns if c.startswith("swept.") and c != SEED_KEY]
    varying = [c for c in swept if runs[c].astype(str).nunique(dropna=False) > 1]
    return varying or swept[:1]


def bootstrap_ci(d: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of the paired differences ``d``."""
    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        return (np.nan, np.nan)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def _seed_of(runs: pd.DataFrame) -> pd.Series:
    return runs[SEED_KEY].astype(str) if SEED_KEY in runs else pd.Series("0", index=runs.index)


def ablation_stats(runs: pd.DataFrame, per_image: pd.DataFrame | None = None, metric: str = "psnr",
                   n_boot: int = 2000, boot_seed: int = 0) -> pd.DataFrame:
    """One row per (setting, set, degradation): n, mean, std (over seeds), delta vs the baseline,
    the bootstrap interval of delta, best-in-column, and the status of the setting's runs.

    ``per_image`` (run_id, set, image, degradation, <metric>) feeds the intervals; without it
    they are left empty. With several test sets, the set ``average`` holds the mean over sets
    (and its interval pools every set's images).
    """
    keys = setting_keys(runs)
    context = [k for k in keys if k not in DROPOUT_KEYS]
    runs = runs.assign(_seed=_seed_of(runs), _base=is_baseline(runs))
    cols = [c for c in runs.columns if c.startswith("test/") and c.endswith(f"/{metric}")]
    finished = runs[runs["state"] == "finished"]

    # Per-run score per (set, degradation), plus the average over sets.
    long = finished.melt(id_vars=["run_id", "_seed", "_base", *keys], value_vars=cols, var_name="key",
                         value_name="value").dropna(subset=["value"])
    long[["set", "degradation"]] = long["key"].str.split("/", expand=True)[[1, 2]]
    long = long.drop(columns="key")
    several_sets = long["set"].nunique() > 1
    if several_sets:
        avg = long.groupby(["run_id", "_seed", "_base", *keys, "degradation"], dropna=False,
                           as_index=False)["value"].mean()
        long = pd.concat([long, avg.assign(set=AVERAGE)], ignore_index=True)

    images = None
    if per_image is not None and not per_image.empty:
        images = per_image.merge(finished[["run_id", "_seed", "_base", *keys]], on="run_id")
        images = images.assign(image_set=images["set"])
        if several_sets:
            images = pd.concat([images, images.assign(set=AVERAGE)], ignore_index=True)

    settings = runs[keys].drop_duplicates()
    rows = []
    for _, setting in settings.iterrows():
        mask = np.logical_and.reduce([runs[k].astype(str) == str(setting[k]) for k in keys])
        mine = runs[mask]
        status = _status(mine)
        scores = long[np.logical_and.reduce([long[k].astype(str) == str(setting[k]) for k in keys])]
        ctx_long = long[np.logical_and.reduce([long[k].astype(str) == str(setting[k]) for k in context])] \
            if context else long
        base_long = ctx_long[ctx_long["_base"]]
        is_base = bool(mine["_base"].all()) if len(mine) else False
        for (test_set, deg), group in scores.groupby(["set", "degradation"], sort=False):
            base = base_long[(base_long["set"] == test_set) & (base_long["degradation"] == deg)]
            row = {**{k.removeprefix("swept."): setting[k] for k in keys}, "set": test_set, "degradation": deg,
                   "n": len(group), "mean": group["value"].mean(),
                   "std": group["value"].std(ddof=1) if len(group) > 1 else np.nan,
                   "baseline": is_base, "status": status}
            if len(base) and not is_base:
                row["delta"] = row["mean"] - base["value"].mean()
                if images is not None:
                    row["ci_low"], row["ci_high"] = bootstrap_ci(
                        _paired_differences(images, setting, keys, context, test_set, deg, metric), n_boot, boot_seed)
            rows.append(row)
        if scores.empty:
            rows.append({**{k.removeprefix("swept."): setting[k] for k in keys}, "set": None, "degradation": None,
                         "n": 0, "mean": np.nan, "baseline": is_base, "status": status})
    out = pd.DataFrame(rows)
    for col in ("std", "delta", "ci_low", "ci_high"):
        if col not in out:
            out[col] = np.nan
    out["best"] = out["mean"].notna() & out["mean"].eq(out.groupby(["set", "degradation"])["mean"].transform("max"))
    return out


def _status(runs: pd.DataFrame) -> str:
    """'finished', or what keeps the setting from counting: failed / unfinished / missing."""
    if runs.empty:
        return "missing"
    states = set(runs["state"])
    if states == {"finished"}:
        return "finished"
    return "+".join(sorted(states - {"finished"}))


def _paired_differences(images: pd.DataFrame, setting, keys, context, test_set, deg, metric) -> np.ndarray:
    sel = images[(images["set"] == test_set) & (images["degradation"] == deg)]
    mine = sel[np.logical_and.reduce([sel[k].astype(str) == str(setting[k]) for k in keys])]
    base = sel[sel["_base"]]
    if context:
        base = base[np.logical_and.reduce([base[k].astype(str) == str(setting[k]) for k in context])]
    # the image key includes the real test set, so 'average' pairs images of every set
    key = ["_seed", "image_key"]
    mine = mine.assign(image_key=mine["image"].astype(str) + "@" + mine["image_set"].astype(str))
    base = base.assign(image_key=base["image"].astype(str) + "@" + base["image_set"].astype(str))
    b = base.groupby(key)[metric].mean()
    m = mine.groupby(key)[metric].mean()
    common = m.index.intersection(b.index)
    if common.empty:  # different seeds: pair by image, averaging the baseline over its seeds
        b = base.groupby("image_key")[metric].mean()
        m = mine.set_index("image_key")[metric]
        return (m - b.reindex(m.index)).dropna().to_numpy()
    return (m.loc[common] - b.loc[common]).to_numpy()
