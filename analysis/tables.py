"""`python -m analysis.tables [SWEEP_DIR | OUTPUT_ROOT]`: the ablation table of each sweep.

Rows: the swept settings; columns: the test degradations (one block per test set);
cells: PSNR (dB). Unfinished runs are never averaged in: their cells show as missing.
Written next to the sweep as Markdown, LaTeX (booktabs) and CSV, and printed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.runs import runs_frame
from srcore.eval_degradations import TEST_DEGRADATIONS


def ablation_table(runs: pd.DataFrame, metric: str = "psnr") -> pd.DataFrame:
    """Pivot one sweep's runs: index = swept settings that vary, columns = (set, degradation)."""
    swept = [c for c in runs.columns if c.startswith("swept.")]
    varying = [c for c in swept if runs[c].nunique(dropna=False) > 1] or swept
    cols = [c for c in runs.columns if c.startswith("test/") and c.endswith(f"/{metric}")]
    finished = runs["state"] == "finished"
    long = (runs.loc[finished, varying + cols]
            .melt(id_vars=varying, value_vars=cols, var_name="key", value_name=metric))
    long[["set", "degradation"]] = long["key"].str.split("/", expand=True)[[1, 2]]
    table = long.pivot_table(index=varying, columns=["set", "degradation"], values=metric, aggfunc="mean")
    # Every launched setting gets a row, even if it has no finished run; rows keep the
    # order the jobs were launched in (runs arrive sorted by start time).
    index = runs[varying].drop_duplicates().set_index(varying).index if varying else table.index
    table = table.reindex(index)
    order = [d for d in TEST_DEGRADATIONS if d in set(table.columns.get_level_values(1))]
    sets = list(dict.fromkeys(table.columns.get_level_values(0)))
    table = table.reindex(columns=pd.MultiIndex.from_product([sets, order], names=["set", "degradation"]))
    table.index.names = [n.removeprefix("swept.") for n in table.index.names]
    return table


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
    esc = lambda s: str(s).replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(caption)}}}",
             r"\begin{tabular}{" + "l" * len(index_names) + "r" * len(degs) + "}", r"\toprule"]
    group = " & " * (len(index_names) - 1)
    lines.append(group + "".join(rf" & \multicolumn{{{len(table[s].columns)}}}{{c}}{{{esc(s)}}}" for s in sets) + r" \\")
    lines.append(" & ".join(esc(n) for n in index_names) + "".join(f" & {esc(d)}" for d in degs) + r" \\")
    lines.append(r"\midrule")
    for key, row in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        cells = ["--" if pd.isna(v) else f"{v:.2f}" for v in row]
        lines.append(" & ".join(esc(k) for k in key) + "".join(f" & {c}" for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, out_dir: Path, title: str, metric: str = "psnr") -> str:
    table = ablation_table(runs, metric)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = to_markdown(table, title)
    (out_dir / f"{metric}.md").write_text(md)
    (out_dir / f"{metric}.tex").write_text(to_latex(table, f"{title}: {metric}"))
    table.to_csv(out_dir / f"{metric}.csv")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="outputs/sweeps", help="a sweep folder, or a folder of sweeps")
    ap.add_argument("--metric", default="psnr", choices=["psnr", "psnr_y", "ssim_y"])
    args = ap.parse_args(argv)
    root = Path(args.root)
    if not root.exists():
        print(f"error: {root} does not exist (run a sweep first: python -m sweeper -m ...)", file=sys.stderr)
        return 2
    runs = runs_frame(root)
    if runs.empty:
        print(f"error: no wandb runs under {root}", file=sys.stderr)
        return 2
    for sweep_dir, sweep_runs in runs.groupby("sweep_dir", sort=True):
        name = sweep_runs["sweep"].iloc[0]
        md = write_tables(sweep_runs, Path(sweep_dir) / "tables", name, args.metric)
        n_done = int((sweep_runs["state"] == "finished").sum())
        print(md)
        print(f"({n_done}/{len(sweep_runs)} runs finished; tables written to {Path(sweep_dir) / 'tables'})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
