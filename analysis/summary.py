"""`python -m analysis.summary <sweep> [--baseline KEY=VALUE]`: a sweep's table in plain sentences.

One sentence per compared setting, read from the statistics ``python -m analysis.tables`` wrote
(``<sweep>/tables/<metric>_stats.csv``; run it first, with the same ``--baseline``): the test
degradations where the setting is better or worse than its baseline with the 95% interval
excluding 0 (averaged over the test sets when there are several), how many columns stay
undecided, and what a study of this size cannot say. It states only what the intervals say.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from analysis.stats import AVERAGE, STAT_COLUMNS, TEST_SET


def _setting_columns(stats: pd.DataFrame) -> list[str]:
    return [c for c in stats.columns if c not in STAT_COLUMNS]


def _cell(row) -> str:
    return f"{row['test_degradation']} ({row['delta']:+.2f} dB [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}])"


def _listing(rows: pd.DataFrame) -> str:
    cells = [_cell(r) for _, r in rows.iterrows()]
    return cells[0] if len(cells) == 1 else ", ".join(cells[:-1]) + " and " + cells[-1]


def _iterations(sweep_dir: Path) -> int | None:
    for results in sorted(Path(sweep_dir).glob("*/results.json")):
        try:
            return int(json.loads(results.read_text())["config"]["train"]["iterations"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def sentences(stats: pd.DataFrame, against: str, iterations: int | None = None, metric: str = "PSNR") -> list[str]:
    """One sentence per non-baseline setting of ``stats`` (``analysis.stats.ablation_stats``)."""
    sets = stats[TEST_SET].dropna().unique()
    test_set = AVERAGE if AVERAGE in sets else (sets[0] if len(sets) else None)
    rows = stats[(stats[TEST_SET] == test_set) & ~stats["baseline"].astype(bool) & stats["delta"].notna()]
    keys = _setting_columns(stats)
    out = []
    for setting, mine in rows.groupby(keys, sort=False, dropna=False):
        values = setting if isinstance(setting, tuple) else (setting,)
        label = " ".join(f"{k}={v}" for k, v in zip(keys, values))
        better = mine[mine["ci_low"] > 0]
        worse = mine[mine["ci_high"] < 0]
        undecided = len(mine) - len(better) - len(worse)
        parts = []
        if len(better):
            parts.append(f"better on {_listing(better)}")
        if len(worse):
            parts.append(f"worse on {_listing(worse)}")
        found = " and ".join(parts) if parts else "not measurably different on any test degradation"
        seeds, images = int(mine["n_seeds"].max()), int(mine["n_images"].max())
        size = f"{seeds} seed{'s' * (seeds != 1)}" + (f" of {iterations} iterations" if iterations else "")
        where = "the test sets" if test_set == AVERAGE else f"{images} {test_set} images"
        out.append(f"In {metric} against {against}, {label} is {found}"
                   + (f" ({undecided} other columns undecided: their 95% intervals include 0)" if parts and undecided
                      else "")
                   + f", on {where} with {size} per setting; a study this small cannot show whether that holds "
                   "for the paper's networks and 500k-iteration training.")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, help="a sweep folder whose tables are written")
    ap.add_argument("--baseline", metavar="KEY=VALUE", help="the --baseline the tables were made with")
    ap.add_argument("--metric", default="psnr", choices=["psnr", "psnr_y", "ssim_y"])
    args = ap.parse_args(argv)
    path = args.sweep_dir / "tables" / f"{args.metric}_stats.csv"
    if not path.exists():
        print(f"error: {path} does not exist; run `python -m analysis.tables {args.sweep_dir}` first", file=sys.stderr)
        return 2
    stats = pd.read_csv(path)
    if "delta" not in stats or stats["delta"].isna().all():
        print(f"error: {path} has no comparisons (no baseline in the sweep? try --baseline KEY=VALUE)", file=sys.stderr)
        return 2
    against = args.baseline or "no regulariser"
    metric = {"psnr": "PSNR", "psnr_y": "PSNR-Y", "ssim_y": "SSIM-Y"}[args.metric]
    print("\n".join(sentences(stats, against, _iterations(args.sweep_dir), metric)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
