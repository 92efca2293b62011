"""`python -m sweeper.baseline [overrides...] [--out table.md]`: the bicubic-interpolation row.

Scores plain bicubic upsampling (no model) on the configured test sets under every test
degradation of the paper's protocol (the same LR images, noise seeds and metrics as a job's
evaluation), prints a Markdown table of PSNR (RGB) and writes it with a CSV of every metric
next to it. A trained model below this row on a column makes that input worse than
interpolating it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from srcore.atomic import atomic_write
from srcore.evaluation import METRICS, evaluate
from srcore.models.interpolation import BicubicInterpolation
from sweeper import build
from sweeper.compose import compose
from sweeper.preflight import validate_config


def interpolation_table(cfg) -> pd.DataFrame:
    """Per test set x degradation means of psnr, psnr_y and ssim_y for bicubic interpolation."""
    test_sets = build.test_sets(cfg)
    degradations = list(cfg.eval.degradations)
    _, means = evaluate(BicubicInterpolation(cfg.scale), test_sets, degradations, cfg.scale,
                        cfg.eval.crop_border, cfg.eval.noise_seed)
    return pd.DataFrame([{"set": s, "degradation": d, **{m: means[f"{s}/{d}/{m}"] for m in METRICS}}
                         for s in test_sets for d in degradations])


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="config overrides, as for python -m sweeper (data=..., eval...)")
    ap.add_argument("--out", type=Path, default=None,
                    help="Markdown path; the CSV goes next to it (default: outputs/baseline/<test sets>.md)")
    args = ap.parse_args(argv)

    cfg = compose(args.overrides)
    validate_config(cfg)
    table = interpolation_table(cfg)

    psnr = table.pivot(index="set", columns="degradation", values="psnr")
    psnr = psnr.loc[list(cfg.data.test_sets), list(cfg.eval.degradations)]
    if len(psnr) > 1:
        psnr.loc["mean"] = psnr.mean()
    md = (f"Bicubic interpolation (Pillow, x{cfg.scale}), PSNR (dB, RGB, crop border {cfg.eval.crop_border})\n\n"
          + psnr.to_markdown(floatfmt=".2f") + "\n")
    out = args.out or Path(cfg.paths.output_root) / "baseline" / ("-".join(cfg.data.test_sets) + ".md")
    atomic_write(out, lambda f: f.write(md), mode="w")
    atomic_write(out.with_suffix(".csv"), lambda f: table.to_csv(f, index=False), mode="w")
    print(md + f"\nwrote {out} and {out.with_suffix('.csv')}")
    return out


if __name__ == "__main__":
    main()
