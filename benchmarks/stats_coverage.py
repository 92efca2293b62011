"""How often the ablation tables' 95% intervals for Δ cover the truth: a simulation at the sizes
the tables meet (5, 14, 68, 100 images; 1, 3, 5 seeds).

    python benchmarks/stats_coverage.py [--reps 2000] [--boot 400] [--seed 0] [--quick]

Model (docs/statistics.md): d[s, i] = μ + a_s + b_i + e_si, the setting - baseline difference
on seed s, image i; a_s ~ N(0, σa²) the seed effect, b_i the image effect (sd 1, normal,
skewed or heavy-tailed), e_si ~ N(0, σe²) their interaction. The truth is μ = 0 with several
seeds; with one seed it is μ + a_1, the difference for this trained model (the seed effect is
not estimable from one seed). Methods compared: the tables' crossed t
(``analysis.stats.crossed_interval``), the same with one Satterthwaite df, a plain t on the
seed-averaged per-image differences, the percentile bootstrap of the pooled pairs (the tables'
method before) and a two-way bootstrap that resamples seeds and images.

Prints Markdown tables (coverage; worst case over the variance mixes) for docs/statistics.md.
Full run: ~10 minutes on 2 CPU cores (the bootstraps); ``--quick`` skips them.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.stats import LEVEL, crossed_interval, mean_squares  # noqa: E402

IMAGES = (5, 14, 68, 100)  # Set5, Set14, BSD68, Urban100 / SEAL's 100 cases
SEEDS = (1, 3, 5)
SEED_SDS = (0.0, 0.3, 1.0, 3.0)  # σa / σb: from images dominating to seeds dominating
RESID_SDS = (0.5, 2.0)  # σe / σb
TARGET = 0.94


def _gamma(k: float):
    """Standardised gamma(k) draws: skewness 2/√k."""
    return lambda rng, shape: (rng.gamma(k, 1.0, shape) - k) / np.sqrt(k)


IMAGE_EFFECTS = {  # name -> draws with mean 0, sd 1
    "normal": lambda rng, shape: rng.standard_normal(shape),
    "skewed": _gamma(4.0),  # skewness 1: a few images gain much more than the rest
    "heavy": lambda rng, shape: rng.standard_t(3, shape) / np.sqrt(3.0),  # t(3): an outlier image
    "very skewed": _gamma(1.0),  # skewness 2 (exponential): a stress test
}
ACCEPTANCE = ("normal", "skewed", "heavy")


@dataclass(frozen=True)
class Scenario:
    image_effects: str
    seed_sd: float
    resid_sd: float

    def __str__(self) -> str:
        return f"{self.image_effects}, σa={self.seed_sd:g}, σe={self.resid_sd:g}"


def scenarios(effects=tuple(IMAGE_EFFECTS)) -> list[Scenario]:
    return [Scenario(e, a, r) for e in effects for a in SEED_SDS for r in RESID_SDS]


def simulate(rng: np.random.Generator, reps: int, seeds: int, images: int, sc: Scenario):
    """``reps`` matrices d (reps, seeds, images) and the truth each interval should cover."""
    a = sc.seed_sd * rng.standard_normal((reps, seeds, 1))
    b = IMAGE_EFFECTS[sc.image_effects](rng, (reps, 1, images))
    e = sc.resid_sd * rng.standard_normal((reps, seeds, images))
    truth = a[:, 0, 0] if seeds == 1 else np.zeros(reps)
    return a + b + e, truth


def chosen(d, rng, n_boot):
    return crossed_interval(d)[1:3]


def satterthwaite_t(d, rng, n_boot):
    """Var = (MS_seed + MS_image - MS_resid)/(NS), never below what one source alone shows,
    with Satterthwaite's df for the combination used."""
    s, n = d.shape[-2:]
    grand, ms_s, ms_i, ms_r = mean_squares(d)
    if s == 1:
        var, df = ms_i, np.full_like(grand, n - 1)
    else:
        full = ms_s + ms_i - ms_r
        with np.errstate(divide="ignore", invalid="ignore"):
            df_full = full ** 2 / (ms_s ** 2 / (s - 1) + ms_i ** 2 / (n - 1) + ms_r ** 2 / ((s - 1) * (n - 1)))
        var = np.maximum.reduce([full, ms_s, ms_i])
        df = np.where(var == full, df_full, np.where(var == ms_s, s - 1, n - 1))
    half = stats.t.ppf((1 + LEVEL) / 2, df) * np.sqrt(var / (n * s))
    return grand - half, grand + half


def seed_averaged_t(d, rng, n_boot):
    """t interval of the per-image differences averaged over seeds (ignores the seed effect)."""
    x = d.mean(axis=-2)
    n = x.shape[-1]
    half = stats.t.ppf((1 + LEVEL) / 2, n - 1) * x.std(axis=-1, ddof=1) / np.sqrt(n)
    return x.mean(axis=-1) - half, x.mean(axis=-1) + half


def _percentiles(means):
    alpha = (1 - LEVEL) / 2
    return tuple(np.quantile(means, [alpha, 1 - alpha], axis=-1))


def percentile_bootstrap(d, rng, n_boot):
    """The S·N pairs resampled with replacement, as one pool (the tables' method before)."""
    flat = d.reshape(d.shape[0], -1)
    counts = rng.multinomial(flat.shape[1], np.full(flat.shape[1], 1 / flat.shape[1]), size=n_boot)
    return _percentiles(flat @ counts.T / flat.shape[1])


def two_way_bootstrap(d, rng, n_boot):
    """Seeds and images resampled independently (the crossed design's bootstrap)."""
    s, n = d.shape[-2:]
    seed_counts = rng.multinomial(s, np.full(s, 1 / s), size=n_boot)
    image_counts = rng.multinomial(n, np.full(n, 1 / n), size=n_boot)
    per_seed = d @ image_counts.T  # (reps, S, B)
    return _percentiles(np.einsum("rsb,bs->rb", per_seed, seed_counts) / (s * n))


METHODS = {
    "crossed t (chosen)": chosen,
    "crossed t, Satterthwaite df": satterthwaite_t,
    "t on seed-averaged images": seed_averaged_t,
    "percentile bootstrap, pooled pairs (before)": percentile_bootstrap,
    "two-way bootstrap, seeds × images": two_way_bootstrap,
}
FAST = tuple(list(METHODS)[:3])


def coverage(method: str, sc: Scenario, seeds: int, images: int, reps: int = 2000, seed: int = 0,
             n_boot: int = 400, chunk: int = 500) -> tuple[float, float]:
    """(coverage, mean width) of ``method`` over ``reps`` simulated comparisons. The draws
    depend only on (seed, scenario, size), so every method sees the same data."""
    key = (seed, list(IMAGE_EFFECTS).index(sc.image_effects), int(sc.seed_sd * 10), int(sc.resid_sd * 10),
           seeds, images)
    data_rng, boot_rng = (np.random.default_rng(np.random.SeedSequence(key + (k,))) for k in (0, 1))
    hits, width = 0, 0.0
    for start in range(0, reps, chunk):
        d, truth = simulate(data_rng, min(chunk, reps - start), seeds, images, sc)
        low, high = METHODS[method](d, boot_rng, n_boot)
        hits += int(np.sum((low <= truth) & (truth <= high)))
        width += float(np.sum(high - low))
    return hits / reps, width / reps


def coverage_grid(methods, effects, reps: int, seed: int, n_boot: int) -> dict:
    """{(method, scenario, seeds, images): (coverage, width)}."""
    return {(m, sc, s, n): coverage(m, sc, s, n, reps, seed, n_boot)
            for m in methods for sc in scenarios(effects) for n in IMAGES for s in SEEDS}


def _header() -> list[str]:
    cells = [f"N={n}, S={s}" for n in IMAGES for s in SEEDS]
    return ["| | " + " | ".join(cells) + " |", "|:--" + "|--:" * len(cells) + "|"]


def _cell(value: float) -> str:
    return f"**{value:.3f}**" if value < TARGET else f"{value:.3f}"


def worst_table(grid: dict, methods, effects) -> str:
    """Worst coverage over the scenarios of ``effects``, per method and size (bold < target)."""
    lines = _header()
    for m in methods:
        worst = [min(grid[m, sc, s, n][0] for sc in scenarios(effects)) for n in IMAGES for s in SEEDS]
        lines.append(f"| {m} | " + " | ".join(_cell(w) for w in worst) + " |")
    return "\n".join(lines)


def by_effects_table(grid: dict, method: str) -> str:
    """The chosen method's worst coverage per kind of image effect."""
    lines = _header()
    for e in IMAGE_EFFECTS:
        worst = [min(grid[method, sc, s, n][0] for sc in scenarios((e,))) for n in IMAGES for s in SEEDS]
        lines.append(f"| {e} | " + " | ".join(_cell(w) for w in worst) + " |")
    return "\n".join(lines)


def width_table(grid: dict, methods, effects) -> str:
    """Mean interval width relative to the chosen method's, averaged over the scenarios."""
    lines = _header()
    base = list(METHODS)[0]
    for m in methods:
        ratio = [np.mean([grid[m, sc, s, n][1] / grid[base, sc, s, n][1] for sc in scenarios(effects)])
                 for n in IMAGES for s in SEEDS]
        lines.append(f"| {m} | " + " | ".join(f"{r:.2f}" for r in ratio) + " |")
    return "\n".join(lines)


def shortfalls(grid: dict, method: str) -> str:
    """Every scenario × size where ``method`` falls below the target."""
    cells = sorted((v[0], str(sc), s, n) for (m, sc, s, n), v in grid.items() if m == method and v[0] < TARGET)
    return "\n".join(f"- {sc}, N={n}, S={s}: {c:.3f}" for c, sc, s, n in cells) or "- none"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000, help="simulated comparisons per cell")
    ap.add_argument("--boot", type=int, default=400, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="skip the bootstraps (seconds instead of minutes)")
    args = ap.parse_args(argv)
    methods = FAST if args.quick else tuple(METHODS)
    start = time.perf_counter()
    grid = coverage_grid(methods, tuple(IMAGE_EFFECTS), args.reps, args.seed, args.boot)
    print(f"{args.reps} replicates per cell, {args.boot} bootstrap resamples, seed {args.seed}; "
          f"variance mixes σa ∈ {SEED_SDS}, σe ∈ {RESID_SDS} (σb = 1); bold: below {TARGET}.\n")
    print(f"Worst coverage over {', '.join(ACCEPTANCE)} image effects and every variance mix:\n")
    print(worst_table(grid, methods, ACCEPTANCE) + "\n")
    print(f"The chosen method, worst coverage per kind of image effect:\n\n{by_effects_table(grid, methods[0])}\n")
    print(f"Cells below {TARGET} for the chosen method:\n\n{shortfalls(grid, methods[0])}\n")
    print(f"Mean width relative to the chosen method:\n\n{width_table(grid, methods, ACCEPTANCE)}\n")
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
