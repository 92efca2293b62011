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
# The test axes of the statistics frame. Named apart from the swept keys, which label the
# rows by their config key: a sweep over the training `degradation` must not collide with them.
TEST_SET, TEST_DEGRADATION = "test_set", "test_degradation"
STAT_COLUMNS = {TEST_SET, TEST_DEGRADATION, "n", "mean", "std", "baseline", "status", "delta", "ci_low", "ci_high",
                "best"}


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


def _ids(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    if not keys:
        return pd.Series("", index=frame.index)
    return frame[keys].astype(str).agg("|".join, axis=1)


def ablation_stats(runs: pd.DataFrame, per_image: pd.DataFrame | None = None, metric: str = "psnr",
                   n_boot: int = 2000, boot_seed: int = 0) -> pd.DataFrame:
    """One row per (setting, test set, test degradation): n, mean, std (over seeds), delta vs the baseline,
    the bootstrap interval of delta, best-in-column, and the status of the setting's runs.

    ``per_image`` (run_id, set, image, degradation, <metric>) feeds the intervals; without it
    they are left empty. With several test sets, the set ``average`` holds the mean over sets
    (and its interval pools every set's images).
    """
    keys = setting_keys(runs)
    context = [k for k in keys if k not in DROPOUT_KEYS]
    runs = runs.assign(_seed=_seed_of(runs), _base=is_baseline(runs), _sid=_ids(runs, keys),
                       _cid=_ids(runs, context))
    cols = [c for c in runs.columns if c.startswith("test/") and c.endswith(f"/{metric}")]
    finished = runs[runs["state"] == "finished"]
    ident = ["run_id", "_seed", "_base", "_sid", "_cid"]

    # Per-run score per (set, degradation), plus the average over sets.
    long = finished.melt(id_vars=ident, value_vars=cols, var_name="key", value_name="value").dropna(subset=["value"])
    long[[TEST_SET, TEST_DEGRADATION]] = long["key"].str.split("/", expand=True)[[1, 2]]
    long = long.drop(columns="key")
    several_sets = long[TEST_SET].nunique() > 1
    if several_sets:
        avg = long.groupby(ident + [TEST_DEGRADATION], as_index=False)["value"].mean()
        long = pd.concat([long, avg.assign(**{TEST_SET: AVERAGE})], ignore_index=True)
    axes = [TEST_SET, TEST_DEGRADATION]
    scores = long.groupby(["_sid", *axes], sort=False)["value"].agg(["count", "mean", "std"])
    base_means = long[long["_base"]].groupby(["_cid", *axes])["value"].mean()

    # Per-image values as one (seed, image) x setting matrix per (set, degradation).
    matrices, base_sids = {}, runs[runs["_base"]].groupby("_cid")["_sid"].unique()
    if per_image is not None and not per_image.empty:
        images = per_image.merge(finished[ident], on="run_id")
        images["image_key"] = images["image"].astype(str) + "@" + images["set"].astype(str)
        if several_sets:
            images = pd.concat([images, images.assign(set=AVERAGE)], ignore_index=True)
        for (test_set, deg), g in images.groupby(["set", "degradation"], sort=False):
            matrices[test_set, deg] = g.pivot_table(index=["_seed", "image_key"], columns="_sid", values=metric,
                                                    aggfunc="mean")

    rows = []
    for sid, mine in runs.groupby("_sid", sort=False):
        setting = mine.iloc[0]
        label = {k.removeprefix("swept."): setting[k] for k in keys}
        status, is_base, cid = _status(mine), bool(mine["_base"].all()), setting["_cid"]
        if sid not in scores.index.get_level_values(0):
            rows.append({**label, TEST_SET: None, TEST_DEGRADATION: None, "n": 0, "mean": np.nan, "baseline": is_base,
                         "status": status})
            continue
        for (test_set, deg), sc in scores.loc[sid].iterrows():
            row = {**label, TEST_SET: test_set, TEST_DEGRADATION: deg, "n": int(sc["count"]), "mean": sc["mean"],
                   "std": sc["std"] if sc["count"] > 1 else np.nan, "baseline": is_base, "status": status}
            if not is_base and (cid, test_set, deg) in base_means.index:
                row["delta"] = row["mean"] - base_means[cid, test_set, deg]
                matrix = matrices.get((test_set, deg))
                if matrix is not None and sid in matrix and cid in base_sids.index:
                    d = _paired_differences(matrix, sid, [b for b in base_sids[cid] if b in matrix])
                    row["ci_low"], row["ci_high"] = bootstrap_ci(d, n_boot, boot_seed)
            rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("std", "delta", "ci_low", "ci_high"):
        if col not in out:
            out[col] = np.nan
    out["best"] = out["mean"].notna() & out["mean"].eq(out.groupby(axes)["mean"].transform("max"))
    return out


def _paired_differences(matrix: pd.DataFrame, sid: str, base_sids: list[str]) -> np.ndarray:
    """setting - baseline per (seed, image); if they share no seed, per image against the
    baseline averaged over its seeds."""
    if not base_sids:
        return np.array([])
    mine = matrix[sid]
    base = matrix[base_sids].mean(axis=1)
    d = (mine - base).dropna()
    if d.empty:
        base_img = base.dropna().groupby(level="image_key").mean()
        mine = mine.dropna()
        d = (mine - base_img.reindex(mine.index.get_level_values("image_key")).to_numpy()).dropna()
    return d.to_numpy()


def _status(runs: pd.DataFrame) -> str:
    """'finished', or what keeps the setting from counting: failed / unfinished / missing."""
    if runs.empty:
        return "missing"
    states = set(runs["state"])
    if states == {"finished"}:
        return "finished"
    return "+".join(sorted(states - {"finished"}))
