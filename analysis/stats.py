"""Statistics behind the ablation tables: for each setting × test set × test degradation, the
mean ± std over seeds and, against the baseline of its context, the change Δ with a 95%
interval, a paired test, the probability of improvement, where the spread comes from, and
whether a single seed decides the sign of Δ. docs/statistics.md says why each method was
chosen; benchmarks/stats_coverage.py measures the interval's coverage.

Baseline: a run with no regulariser at all (``is_baseline``). Context: every swept key except
the regulariser keys and the seed; each setting is compared with the baseline of its context.

Pairing: d[s, i] = metric(setting) - metric(baseline) on seed s, image i, on the same seed
where both have it (several baseline settings in one context are averaged); if they share no
seed, each of the setting's seeds is compared with the baseline averaged over its seeds. Only
the images that every seed has are kept. Model: d[s, i] = μ + a_s + b_i + e_si, seeds and
images random and crossed. Per comparison (columns of the stats frame):

- ``ci_low``/``ci_high``, ``se``, ``df``, ``method``: the interval for μ (``crossed_interval``);
  with one seed it is about these images given this trained model (μ + a_1), not about training;
- ``p``: Wilcoxon signed-rank test of the S·N pooled differences (two-sided); ``p_holm``: Holm's
  step-down adjustment over every comparison of the table (all test sets and degradations);
- ``p_improve``: the share of (seed, image) pairs where the setting beats the baseline (ties
  count half);
- ``var_seed``/``var_image``/``var_resid``: shares of the variance of one difference d[s, i]
  from seeds, images and their interaction (two-way ANOVA; one seed: all of it is images);
- ``seed_decides``: only one seed, or leaving out one seed flips the sign of Δ.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
from scipy import stats

REGULARIZER_KEY = "swept.regularizer"  # the `regularizer=[...]` config group: extra regularisers
REGULARIZER_PREFIXES = ("swept.dropout.", "swept.regularizers.")  # their settings
NO_REGULARIZER = ("[]", "none", "null")  # values of REGULARIZER_KEY that select none
SEED_KEY = "swept.seed"
AVERAGE = "average"  # the pseudo test set: all test sets' images together
# The test axes of the statistics frame. Named apart from the swept keys, which label the
# rows by their config key: a sweep over the training `degradation` must not collide with them.
TEST_SET, TEST_DEGRADATION = "test_set", "test_degradation"
LEVEL = 0.95  # of every interval
SIGNIFICANCE = 0.05  # Holm-adjusted p below this is significant
COMPARISON_COLUMNS = ("ci_low", "ci_high", "se", "df", "method", "n_seeds", "n_images", "p", "p_holm",
                      "p_improve", "var_seed", "var_image", "var_resid", "seed_decides")
STAT_COLUMNS = {TEST_SET, TEST_DEGRADATION, "n", "mean", "std", "baseline", "status", "delta", "best",
                *COMPARISON_COLUMNS}
METHOD_CROSSED, METHOD_IMAGES, METHOD_SEEDS = "t seeds×images", "t images (1 seed)", "t seeds (1 image)"


def is_regularizer_key(key: str) -> bool:
    return key == REGULARIZER_KEY or key.startswith(REGULARIZER_PREFIXES)


def is_baseline(runs: pd.DataFrame) -> pd.Series:
    """Runs with no regulariser at all. ``regularizer`` (the config group) selects the
    regularisers, dropout by default (its own keys then say whether it acts): a run is the
    baseline when it selects none (``regularizer=none``), or only dropout with dropout off
    (position none, or p = 0: Dropout with p = 0 is the identity).

    Judged from the swept keys alone: if neither the regulariser nor dropout is swept, there is
    no baseline.
    """
    dropout_keys = [k for k in ("swept.dropout.position", "swept.dropout.p") if k in runs]
    if not dropout_keys and REGULARIZER_KEY not in runs:
        return pd.Series(False, index=runs.index)
    dropout_off = pd.Series(False, index=runs.index)
    if "swept.dropout.position" in runs:
        dropout_off |= runs["swept.dropout.position"].astype(str).eq("none")
    if "swept.dropout.p" in runs:
        dropout_off |= pd.to_numeric(runs["swept.dropout.p"], errors="coerce").eq(0)
    if REGULARIZER_KEY not in runs:
        return dropout_off
    selected = runs[REGULARIZER_KEY].map(_selected_regularizers)
    return selected.map(lambda names: not names) | (selected.map(lambda names: names == {"dropout"}) & dropout_off)


def _selected_regularizers(value) -> set[str]:
    """The names a ``regularizer=`` override selects; not set: the default, dropout."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return {"dropout"}
    text = str(value).strip().lower()
    if text in NO_REGULARIZER:
        return set()
    return {n.strip() for n in text.strip("[]").split(",") if n.strip() and n.strip() not in NO_REGULARIZER}


def setting_keys(runs: pd.DataFrame) -> list[str]:
    """The swept keys that tell the rows apart (the seed is averaged over, not a row)."""
    swept = [c for c in runs.columns if c.startswith("swept.") and c != SEED_KEY]
    varying = [c for c in swept if runs[c].astype(str).nunique(dropna=False) > 1]
    return varying or swept[:1]


# --- One comparison: the seeds × images matrix d of paired differences ---------------------

def _per_df(sum_sq: np.ndarray, df: int) -> np.ndarray:
    return sum_sq / df if df > 0 else np.full_like(sum_sq, np.nan)


def mean_squares(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-way ANOVA of d[..., S, N] (one value per seed × image; leading axes are separate
    matrices): the grand mean and the mean squares of seeds, images and residual."""
    s, n = d.shape[-2:]
    grand = d.mean(axis=(-2, -1))
    seed_dev = d.mean(axis=-1) - grand[..., None]
    image_dev = d.mean(axis=-2) - grand[..., None]
    resid = d - seed_dev[..., :, None] - image_dev[..., None, :] - grand[..., None, None]
    return (grand, _per_df(n * (seed_dev ** 2).sum(axis=-1), s - 1),
            _per_df(s * (image_dev ** 2).sum(axis=-1), n - 1),
            _per_df((resid ** 2).sum(axis=(-2, -1)), (s - 1) * (n - 1)))


def crossed_interval(d: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, ...]:
    """(mean, low, high, se) of d[..., S, N], vectorised over the leading axes.

    Var(mean) = σa²/S + σb²/N + σe²/(NS) = (MS_seed + MS_image - MS_resid)/(NS) splits into a
    seed part A = MS_seed/(NS) (S-1 df) and an image part B = (MS_image - MS_resid)⁺/(NS)
    (N-1 df); each gets its own t quantile: half² = t²(S-1)·A + t²(N-1)·B (Banerjee's
    conservative combination: one Satterthwaite df for the sum undercovers at three seeds).
    One seed: t over images, B = MS_image/N, the seed effect is not estimable. One image:
    t over seeds. One of each: no interval (NaN).
    """
    d = np.asarray(d, dtype=np.float64)
    s, n = d.shape[-2:]
    grand, ms_seed, ms_image, ms_resid = mean_squares(d)
    zero = np.zeros_like(grand)
    if s == 1:
        seed_part, image_part = zero, ms_image / n
    elif n == 1:
        seed_part, image_part = ms_seed / s, zero
    else:
        seed_part, image_part = ms_seed / (n * s), np.maximum(ms_image - ms_resid, 0) / (n * s)
    q = (1 + level) / 2
    t_seed = stats.t.ppf(q, s - 1) if s > 1 else 0.0
    t_image = stats.t.ppf(q, n - 1) if n > 1 else 0.0
    se = np.sqrt(seed_part + image_part)
    half = np.sqrt(t_seed ** 2 * seed_part + t_image ** 2 * image_part)
    if s == n == 1:
        se = half = np.full_like(grand, np.nan)
    return grand, grand - half, grand + half, se


@functools.lru_cache(maxsize=4)
def _t_quantiles(level: float) -> tuple[np.ndarray, np.ndarray]:
    """log df and the t quantile at ``level`` on a fine grid (the quantile falls as df grows)."""
    df = np.geomspace(0.5, 1e7, 4000)
    return np.log(df)[::-1], stats.t.ppf((1 + level) / 2, df)[::-1]


def effective_df(multiplier: float, level: float = LEVEL) -> float:
    """The t degrees of freedom whose `level` quantile is ``multiplier`` (= half-width / se);
    interpolated on a grid: relative error below 1e-4."""
    log_df, quantile = _t_quantiles(level)
    if not np.isfinite(multiplier):
        return np.nan
    if multiplier <= quantile[0]:
        return np.inf
    return float(np.exp(np.interp(multiplier, quantile, log_df)))


def variance_shares(d: np.ndarray) -> tuple[float, float, float]:
    """(seed, image, residual) shares of the variance of one d[s, i], from the ANOVA's
    components: σa² = (MS_seed - MS_resid)/N, σb² = (MS_image - MS_resid)/S (each ≥ 0),
    σe² = MS_resid. One seed: images hold all of it; one image: seeds do."""
    s, n = d.shape
    _, ms_seed, ms_image, ms_resid = (float(x) for x in mean_squares(np.asarray(d, dtype=np.float64)))
    if s == 1 or n == 1:
        spread = ms_image if s == 1 else ms_seed
        share = 1.0 if np.isfinite(spread) and spread > 0 else np.nan
        return (np.nan, share, np.nan) if s == 1 else (share, np.nan, np.nan)
    parts = np.array([max(ms_seed - ms_resid, 0) / n, max(ms_image - ms_resid, 0) / s, ms_resid])
    total = parts.sum()
    return tuple(float(x) for x in parts / total) if total > 0 else (np.nan,) * 3


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of the pooled differences (zeros dropped, scipy's
    default); 1 when every difference is zero, NaN when there is none."""
    x = np.asarray(d, dtype=np.float64).ravel()
    if x.size == 0:
        return np.nan
    if not np.any(x):
        return 1.0
    with warnings.catch_warnings():  # scipy warns that ties and zeros make small-n p-values inexact
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(x).pvalue)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: the k-th smallest of m becomes
    max over j ≤ k of min(1, (m - j + 1) p_(j)). NaNs stay NaN and do not count in m."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    out[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return out


def p_improve(d: np.ndarray) -> float:
    """P(setting beats baseline on a (seed, image) pair); ties count half."""
    x = np.asarray(d, dtype=np.float64).ravel()
    return float((np.sum(x > 0) + 0.5 * np.sum(x == 0)) / x.size) if x.size else np.nan


def compare(d: np.ndarray) -> dict:
    """The comparison columns (all but ``p_holm`` and ``seed_decides``) of one seeds × images d."""
    s, n = d.shape
    _, low, high, se = (float(x) for x in crossed_interval(d))
    method = METHOD_IMAGES if s == 1 else METHOD_SEEDS if n == 1 else METHOD_CROSSED
    if s == 1 or n == 1:
        df = float(max(s, n) - 1) if s * n > 1 else np.nan
    else:
        df = effective_df((high - low) / 2 / se) if se > 0 else np.nan
    var_seed, var_image, var_resid = variance_shares(d)
    return {"ci_low": low, "ci_high": high, "se": se, "df": df, "method": method, "n_seeds": s, "n_images": n,
            "p": wilcoxon_p(d), "p_improve": p_improve(d), "var_seed": var_seed, "var_image": var_image,
            "var_resid": var_resid}


def seed_decides(seeds: np.ndarray, values: np.ndarray, base_seeds: np.ndarray, base_values: np.ndarray) -> bool:
    """Whether one seed decides the sign of Δ = mean(values) - mean(base_values) (run-level
    scores): the setting has one seed, or leaving any one seed out of both flips the sign."""
    if len(np.unique(seeds)) < 2:
        return True
    sign = np.sign(values.mean() - base_values.mean())
    for seed in np.unique(seeds):
        base = base_values[base_seeds != seed]
        loo = values[seeds != seed].mean() - (base if base.size else base_values).mean()
        if np.sign(loo) != sign:
            return True
    return False


# --- The table: one row per setting × test set × test degradation ---------------------------

def _seed_of(runs: pd.DataFrame) -> pd.Series:
    return runs[SEED_KEY].astype(str) if SEED_KEY in runs else pd.Series("0", index=runs.index)


def _ids(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    if not keys:
        return pd.Series("", index=frame.index)
    return frame[keys].astype(str).fillna("nan").agg("|".join, axis=1)  # a key some jobs did not set


def _run_scores(finished: pd.DataFrame, ident: list[str], metric: str) -> tuple[pd.DataFrame, bool]:
    """One row per finished run × test set × degradation (plus the ``average`` set over sets
    when there are several); whether there are several."""
    cols = [c for c in finished.columns if c.startswith("test/") and c.endswith(f"/{metric}")]
    long = finished.melt(id_vars=ident, value_vars=cols, var_name="key", value_name="value").dropna(subset=["value"])
    long[[TEST_SET, TEST_DEGRADATION]] = long["key"].str.split("/", expand=True)[[1, 2]]
    long = long.drop(columns="key")
    several_sets = long[TEST_SET].nunique() > 1
    if several_sets:
        avg = long.groupby(ident + [TEST_DEGRADATION], as_index=False)["value"].mean()
        long = pd.concat([long, avg.assign(**{TEST_SET: AVERAGE})], ignore_index=True)
    return long, several_sets


def _image_matrices(finished: pd.DataFrame, per_image: pd.DataFrame | None, ident: list[str], metric: str,
                    several_sets: bool) -> dict:
    """Per (test set, degradation): the per-image values as a (seed, image) x setting matrix."""
    if per_image is None or per_image.empty:
        return {}
    images = per_image.merge(finished[ident], on="run_id")
    images["image_key"] = images["image"].astype(str) + "@" + images["set"].astype(str)
    if several_sets:
        images = pd.concat([images, images.assign(set=AVERAGE)], ignore_index=True)
    return {(test_set, deg): g.pivot_table(index=["_seed", "image_key"], columns="_sid", values=metric,
                                           aggfunc="mean")
            for (test_set, deg), g in images.groupby(["set", "degradation"], sort=False)}


def _paired_differences(matrix: pd.DataFrame, sid: str, base_sids: list[str]) -> np.ndarray:
    """setting - baseline as a seeds × images array (see the module doc); empty if none."""
    if not base_sids:
        return np.empty((0, 0))
    mine = matrix[sid]
    base = matrix[base_sids].mean(axis=1)
    d = (mine - base).dropna()
    if d.empty:
        base_img = base.dropna().groupby(level="image_key").mean()
        mine = mine.dropna()
        d = (mine - base_img.reindex(mine.index.get_level_values("image_key")).to_numpy()).dropna()
    return d.unstack("image_key").dropna(axis=1).to_numpy() if not d.empty else np.empty((0, 0))


def _arrays(frame: pd.DataFrame, by: list[str]) -> dict:
    return {key: (g["_seed"].to_numpy(), g["value"].to_numpy(dtype=np.float64))
            for key, g in frame.groupby(by, sort=False)}


def chosen_baseline(runs: pd.DataFrame, baseline: str) -> pd.Series:
    """The runs of ``baseline`` ("key=value", a swept key), e.g. ``degradation=bicubic``: each
    setting is then compared with the run of that value whose other swept keys are alike."""
    key, _, value = baseline.partition("=")
    column = f"swept.{key.strip()}"
    if not value or column not in runs:
        swept = sorted(c.removeprefix("swept.") for c in runs.columns if c.startswith("swept.") and c != SEED_KEY)
        raise ValueError(f"baseline '{baseline}' must be key=value with a swept key: one of {', '.join(swept)}")
    chosen = runs[column].astype(str).eq(value.strip())
    if not chosen.any():
        values = sorted(runs[column].astype(str).unique())
        raise ValueError(f"baseline '{baseline}': no run has {key.strip()}={value.strip()} (swept: {', '.join(values)})")
    return chosen


def ablation_stats(runs: pd.DataFrame, per_image: pd.DataFrame | None = None, metric: str = "psnr",
                   baseline: str | None = None) -> pd.DataFrame:
    """One row per (setting, test set, test degradation): n, mean, std (over seeds), delta vs
    the baseline, the comparison columns (module doc), best-in-column, and the status of the
    setting's runs. ``baseline`` ("key=value") compares along that swept key instead of against
    no regulariser (``chosen_baseline``).

    ``per_image`` (run_id, set, image, degradation, <metric>) feeds the interval, the test,
    P(improve) and the variance split; without it they are left empty. With several test sets,
    the set ``average`` holds the mean over sets (and its comparison pools every set's images).
    """
    keys = setting_keys(runs)
    if baseline:
        base = chosen_baseline(runs, baseline)
        context = [k for k in keys if k != f"swept.{baseline.partition('=')[0].strip()}"]
    else:
        base = is_baseline(runs)
        context = [k for k in keys if not is_regularizer_key(k)]
    runs = runs.assign(_seed=_seed_of(runs), _base=base, _sid=_ids(runs, keys), _cid=_ids(runs, context))
    finished = runs[runs["state"] == "finished"]
    ident = ["run_id", "_seed", "_base", "_sid", "_cid"]
    long, several_sets = _run_scores(finished, ident, metric)
    axes = [TEST_SET, TEST_DEGRADATION]
    scores = long.groupby(["_sid", *axes], sort=False)["value"].agg(["count", "mean", "std"])
    base_scores = _arrays(long[long["_base"]], ["_cid", *axes])
    run_scores = _arrays(long, ["_sid", *axes])
    matrices = _image_matrices(finished, per_image, ident, metric, several_sets)
    base_sids = runs[runs["_base"]].groupby("_cid")["_sid"].unique()

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
            base = base_scores.get((cid, test_set, deg))
            if not is_base and base is not None:
                seeds, values = run_scores[sid, test_set, deg]
                row["delta"] = values.mean() - base[1].mean()
                row["seed_decides"] = seed_decides(seeds, values, *base)
                matrix = matrices.get((test_set, deg))
                if matrix is not None and sid in matrix and cid in base_sids.index:
                    d = _paired_differences(matrix, sid, [b for b in base_sids[cid] if b in matrix])
                    if d.size:
                        row.update(compare(d))
            rows.append(row)
    return _finish(pd.DataFrame(rows), axes)


def _finish(out: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Fill the columns no row set, adjust p over the table, mark the best mean per column."""
    for col in ("std", "delta", *COMPARISON_COLUMNS):
        if col not in out:
            out[col] = np.nan
    out["p_holm"] = holm(out["p"].to_numpy(dtype=np.float64))
    out["best"] = out["mean"].notna() & out["mean"].eq(out.groupby(axes)["mean"].transform("max"))
    return out


def _status(runs: pd.DataFrame) -> str:
    """'finished', or what keeps the setting from counting: failed / unfinished / missing."""
    if runs.empty:
        return "missing"
    states = set(runs["state"])
    if states == {"finished"}:
        return "finished"
    return "+".join(sorted(states - {"finished"}))
