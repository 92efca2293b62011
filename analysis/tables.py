"""`python -m analysis.tables [SWEEP_DIR | OUTPUT_ROOT]`: the ablation table of each sweep.

Rows: the swept settings; columns: the test degradations (one block per test set);
cells: PSNR (dB). Unfinished runs are never averaged in: their cells show as missing.
Written next to the sweep as Markdown, LaTeX (booktabs) and CSV, and printed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.figures import write_figures
from analysis.outfiles import write_csv, write_text
from analysis.runs import runs_frame, with_per_image
from analysis.seal_table import write_seal_table
from analysis.stats import AVERAGE, LEVEL, SIGNIFICANCE, STAT_COLUMNS, TEST_DEGRADATION, TEST_SET, ablation_stats
from srcore.evaluation import TEST_DEGRADATIONS


def ablation_table(runs: pd.DataFrame, metric: str = "psnr") -> pd.DataFrame:
    """Pivot one sweep's runs: index = swept settings that vary, columns = (test set, test degradation)."""
    swept = [c for c in runs.columns if c.startswith("swept.")]
    varying = [c for c in swept if runs[c].nunique(dropna=False) > 1] or swept
    cols = [c for c in runs.columns if c.startswith("test/") and c.endswith(f"/{metric}")]
    finished = runs["state"] == "finished"
    long = (runs.loc[finished, varying + cols]
            .melt(id_vars=varying, value_vars=cols, var_name="key", value_name=metric))
    long[[TEST_SET, TEST_DEGRADATION]] = long["key"].str.split("/", expand=True)[[1, 2]]
    table = long.pivot_table(index=varying, columns=[TEST_SET, TEST_DEGRADATION], values=metric, aggfunc="mean")
    # Every launched setting gets a row, even if it has no finished run; rows keep the
    # order the jobs were launched in (runs arrive sorted by start time).
    index = runs[varying].drop_duplicates().set_index(varying).index if varying else table.index
    table = table.reindex(index)
    order = [d for d in TEST_DEGRADATIONS if d in set(table.columns.get_level_values(1))]
    sets = list(dict.fromkeys(table.columns.get_level_values(0)))
    table = table.reindex(columns=pd.MultiIndex.from_product([sets, order], names=[TEST_SET, TEST_DEGRADATION]))
    table.index.names = [n.removeprefix("swept.") for n in table.index.names]
    return table


SIGNIFICANT, SEED_DECIDES = "†", "‡"  # the cell marks; legend() explains them


def format_cell(row, bold: str = "**{}**") -> str:
    """'mean ± std (Δ [lo, hi])' + marks; the best mean of a column in bold; missing runs say why."""
    if pd.isna(row.get("mean")):
        return row.get("status") if row.get("status") not in (None, "finished") else "—"
    text = f"{row['mean']:.2f}"
    if pd.notna(row.get("std")):
        text += f" ± {row['std']:.2f}"
    if row.get("best"):
        text = bold.format(text)
    if pd.notna(row.get("delta")):
        ci = f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" if pd.notna(row.get("ci_low")) else ""
        text += f" ({row['delta']:+.2f}{ci})" + _marks(row)
    if row.get("status") not in (None, "finished"):
        text += f" ({row['status']} runs left out)"
    return text


def _marks(row) -> str:
    significant = pd.notna(row.get("p_holm")) and row["p_holm"] < SIGNIFICANCE
    seed_decides = pd.notna(row.get("seed_decides")) and bool(row["seed_decides"])
    return (SIGNIFICANT if significant else "") + (SEED_DECIDES if seed_decides else "")


def legend(stats: pd.DataFrame, metric: str, baseline: str | None = None) -> str:
    """The lines under a table: what a cell holds and what its marks mean."""
    tests = int(stats["p"].notna().sum())
    significance = (f"{SIGNIFICANT}: Holm-adjusted p < {SIGNIFICANCE:g} over the table's {tests} comparisons, "
                    "Wilcoxon signed-rank on the (seed, image) differences pooled: about these trained models, "
                    "while the interval also counts seed-to-seed variation. " if tests else
                    "No per-image results: no interval and no test. ")
    against = f"the runs with {baseline}" if baseline else "the baseline: no regulariser"
    return (f"Cells: {metric} mean ± std over seeds (Δ vs {against}, other settings alike "
            f"[{LEVEL:.0%} interval, seeds and images random]); best mean per column in bold. {significance}"
            f"{SEED_DECIDES}: one seed decides the sign of Δ (a single seed, or leaving one out flips it). "
            f"Every number: {metric}_stats.csv; methods: docs/statistics.md.")


def budget_note(runs: pd.DataFrame) -> str:
    """What a table of regularisers held equal, when one of its runs degraded every GT patch
    several times (Simple Align): the runs' ``train.budget``."""
    from srcore.regularizers import REGULARIZERS

    def views(config) -> int:
        regs = (config or {}).get("regularizers") or {}
        return max((REGULARIZERS[n].views for n in regs if n in REGULARIZERS), default=1)

    configs = runs["config"] if "config" in runs else pd.Series([], dtype=object)
    if not any(views(c) > 1 for c in configs):
        return ""
    budgets = sorted({((c or {}).get("train") or {}).get("budget", "gt_images") for c in configs})
    held = {"gt_images": "GT patches per iteration (a k-view regulariser runs k x the forward passes)",
            "forward_passes": "forward passes (a k-view regulariser sees 1/k of the GT patches)"}
    return " Budget held equal (train.budget): " + "; ".join(f"{b}: {held.get(b, b)}" for b in budgets) + "."


def formatted_table(stats: pd.DataFrame, bold: str = "**{}**") -> pd.DataFrame:
    """Rows = settings (in launch order), columns = (test set, test degradation), cells = format_cell."""
    keys = [c for c in stats.columns if c not in STAT_COLUMNS]
    # a key some settings do not set (a regulariser's own settings) must not drop their rows
    stats = stats.assign(**{k: stats[k].astype(object).where(stats[k].notna(), "—") for k in keys})
    cells = stats.assign(cell=[format_cell(r, bold) for r in stats.to_dict("records")])
    present = cells.dropna(subset=[TEST_SET])
    table = present.pivot_table(index=keys, columns=[TEST_SET, TEST_DEGRADATION], values="cell", aggfunc="first",
                                sort=False)
    table = table.reindex(stats[keys].drop_duplicates().set_index(keys).index)
    found = set(present[TEST_SET])
    sets = [x for x in dict.fromkeys(present[TEST_SET]) if x != AVERAGE] + ([AVERAGE] if AVERAGE in found else [])
    degs = [d for d in TEST_DEGRADATIONS if d in set(present[TEST_DEGRADATION])]
    table = table.reindex(columns=pd.MultiIndex.from_product([sets, degs], names=[TEST_SET, TEST_DEGRADATION]))
    missing = stats[stats[TEST_SET].isna()].set_index(keys)["status"]
    for key, status in missing.items():
        table.loc[key] = status
    return table.fillna("—")


def to_markdown(table: pd.DataFrame, title: str) -> str:
    parts = [f"## {title}"]
    for test_set in table.columns.get_level_values(0).unique():
        block = table[test_set].reset_index()
        parts += [f"\n**{test_set}** — PSNR (dB, RGB)\n", block.to_markdown(index=False, floatfmt=".2f")]
    return "\n".join(parts) + "\n"


def to_latex(table: pd.DataFrame, caption: str) -> str:
    """A booktabs table: one column group per test set."""
    index_names = list(table.index.names)
    sets = list(table.columns.get_level_values(0).unique())
    degs = list(table.columns.get_level_values(1))
    esc = lambda s: (str(s).replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")  # noqa: E731
                     .replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("—", "--")
                     .replace("×", r"$\times$").replace("<", "$<$").replace(SIGNIFICANT, r"$^\dagger$")
                     .replace(SEED_DECIDES, r"$^\ddagger$"))
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(caption)}}}",
             r"\begin{tabular}{" + "l" * len(index_names) + "r" * len(degs) + "}", r"\toprule"]
    group = " & " * (len(index_names) - 1)
    lines.append(group + "".join(rf" & \multicolumn{{{len(table[s].columns)}}}{{c}}{{{esc(s)}}}" for s in sets) + r" \\")
    lines.append(" & ".join(esc(n) for n in index_names) + "".join(f" & {esc(d)}" for d in degs) + r" \\")
    lines.append(r"\midrule")
    for key, row in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        cells = [("--" if pd.isna(v) else f"{v:.2f}") if not isinstance(v, str) else esc(v) for v in row]
        lines.append(" & ".join(esc(k) for k in key) + "".join(f" & {c}" for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, out_dir: Path, title: str, metric: str = "psnr",
                 per_image: pd.DataFrame | None = None, baseline: str | None = None) -> str:
    """<metric>.md / .tex: mean ± std over seeds, (Δ vs the baseline [95% interval]) with the
    marks of ``legend``, best per column in bold; <metric>.csv: the means; <metric>_stats.csv:
    every number. Without ``per_image``, the runs' per-image tables are read here (a run whose
    table cannot be read shows as corrupt). Every file is written atomically."""
    if per_image is None:
        runs, per_image = with_per_image(runs)
    stats = ablation_stats(runs, per_image, metric, baseline)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = legend(stats, metric, baseline) + budget_note(runs)
    md = to_markdown(formatted_table(stats), title) + f"\n{notes}\n"
    write_text(out_dir / f"{metric}.md", md)
    caption = f"{title}: {metric}. {notes}"
    write_text(out_dir / f"{metric}.tex", to_latex(formatted_table(stats, r"\textbf{{{}}}"), caption))
    write_csv(out_dir / f"{metric}.csv", ablation_table(runs, metric))
    write_csv(out_dir / f"{metric}_stats.csv", stats, index=False)
    write_figures(stats, out_dir / "figures", metric)
    return md


def interpretation_table(runs: pd.DataFrame) -> pd.DataFrame | None:
    """One row per job that has <job>/interpret/interpretation.json: evenness of the channel
    saliency at the analysed layer, CHI, and the job's mean PSNR over the test degradations."""
    import json

    keys = [c for c in runs.columns if c.startswith("swept.") and runs[c].astype(str).nunique() > 1]
    rows = []
    for _, run in runs.iterrows():
        if not isinstance(run.get("run_dir"), str):
            continue
        path = Path(run["run_dir"]).parents[1] / "interpret" / "interpretation.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        ev = r["evenness"][r["layer"]]
        psnrs = [v for k, v in run.items() if k.startswith("test/") and k.endswith("/psnr") and pd.notna(v)]
        rows.append({**{k.removeprefix("swept."): run[k] for k in keys}, "layer": r["layer"], "gini": ev["gini"],
                     "entropy": ev["entropy"], "cv": ev["cv"], "chi": r["chi"], "chi_2d": r["chi_2d"],
                     "psnr (mean)": float(np.mean(psnrs)) if psnrs else np.nan})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    index = [k.removeprefix("swept.") for k in keys]
    return frame.set_index(index) if index else frame


def has_scores(runs: pd.DataFrame, metric: str) -> bool:
    """Whether a finished run of the sweep has a test score in ``metric`` (else there is no table)."""
    cols = [c for c in runs.columns if c.startswith("test/") and c.endswith(f"/{metric}")]
    return bool(cols) and runs.loc[runs["state"] == "finished", cols].notna().any(axis=None)


def status_table(runs: pd.DataFrame, title: str, metric: str) -> str:
    """What a sweep without scores shows instead of its table: each run's settings and state."""
    keys = [c for c in runs.columns if c.startswith("swept.") and runs[c].astype(str).nunique() > 1]
    rows = runs[keys + ["state", "name"]].rename(columns=lambda c: c.removeprefix("swept."))
    return (f"## {title}\n\nNo finished run has test {metric} scores yet, so there is no table; "
            f"the runs and their states:\n\n{rows.to_markdown(index=False)}\n")


def sweep_tables(sweep_dir: Path, runs: pd.DataFrame, metric: str, baseline: str | None = None) -> None:
    """Write and print one sweep's tables (or its runs' states when none has scores)."""
    name = runs["sweep"].mode().iloc[0]
    out = Path(sweep_dir) / "tables"
    runs, per_image = with_per_image(runs)  # a run whose per-image table is unreadable: corrupt
    if not has_scores(runs, metric):
        write_text(out / "status.md", status_table(runs, name, metric))
        print(status_table(runs, name, metric))
    else:
        print(write_tables(runs, out, name, metric, per_image, baseline=baseline))
    seal = write_seal_table(runs, out, name)  # eval=seal: the sweep beside SEAL's published models
    if seal:
        print(seal)
    interp = interpretation_table(runs)
    if interp is not None:  # CHI and evenness next to PSNR (python -m analysis.interpret)
        write_text(out / "interpretation.md", interp.to_markdown(floatfmt=".4f"))
        write_csv(out / "interpretation.csv", interp)
        print("**Interpretation** (channel-saliency evenness and degradation-cluster CHI)\n\n"
              + interp.to_markdown(floatfmt=".4f") + "\n")
    trials = Path(sweep_dir) / "trials.csv"
    if trials.exists():  # an Optuna study: its trials, best first
        frame = pd.read_csv(trials)
        if "value" in frame:
            frame = frame.sort_values("value", ascending=False, na_position="last")
        write_text(out / "trials.md", frame.to_markdown(index=False, floatfmt=".3f"))
        print(f"**Optuna trials** ({trials})\n\n" + frame.to_markdown(index=False, floatfmt=".3f") + "\n")
    n_done = int((runs["state"] == "finished").sum())
    print(f"({n_done}/{len(runs)} runs finished; tables written to {out})\n")


def _each_sweep(groups, make) -> int:
    """Run ``make(sweep, runs)`` for every sweep; one that fails is reported in one line and the
    others still get their tables. The exit status: 1 if any failed."""
    failed = 0
    for sweep, runs in groups:
        try:
            make(sweep, runs)
        except Exception as e:  # noqa: BLE001 - one bad sweep must not stop the others
            failed += 1
            print(f"error: sweep {sweep}: no tables ({type(e).__name__}: {' '.join(str(e).split())[:300]})",
                  file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="outputs/sweeps", help="a sweep folder, or a folder of sweeps")
    ap.add_argument("--metric", default="psnr", choices=["psnr", "psnr_y", "ssim_y"])
    ap.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from a wandb server instead of files")
    ap.add_argument("--group", help="with --wandb: only this sweep (wandb group)")
    ap.add_argument("--tag", action="append", help="with --wandb: only runs with one of these tags")
    ap.add_argument("--out", type=Path, default=Path("outputs/tables"), help="with --wandb: where tables go")
    ap.add_argument("--baseline", metavar="KEY=VALUE", help="compare along a swept key instead of against no "
                    "regulariser, e.g. --baseline degradation=bicubic")
    args = ap.parse_args(argv)
    if args.wandb:
        from analysis.wandb_api import api_runs_frame, per_image_frame_api
        runs = api_runs_frame(args.wandb, group=args.group, tags=args.tag)
        if runs.empty:
            print(f"error: no runs in {args.wandb} matching group={args.group} tags={args.tag}", file=sys.stderr)
            return 2
        images = per_image_frame_api(runs)
        return _each_sweep(runs.groupby("sweep", sort=True, dropna=False), lambda sweep, sweep_runs: print(
            write_tables(sweep_runs, args.out / str(sweep), str(sweep), args.metric,
                         images[images["run_id"].isin(sweep_runs["run_id"])], args.baseline)))
    root = Path(args.root)
    if not root.exists():
        print(f"error: {root} does not exist (run a sweep first: python -m sweeper -m ...)", file=sys.stderr)
        return 2
    runs = runs_frame(root)
    if runs.empty:
        print(f"error: no wandb runs under {root}", file=sys.stderr)
        return 2
    return _each_sweep(runs.groupby("sweep_dir", sort=True),
                       lambda sweep_dir, sweep_runs: sweep_tables(sweep_dir, sweep_runs, args.metric, args.baseline))


if __name__ == "__main__":
    import warnings

    # a damaged run is a one-line warning naming its file, not a line of this module's source
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    sys.exit(main())
