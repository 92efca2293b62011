"""The SEAL table of a sweep: its settings' PSNR-S, AR and RPR (mean over seeds) beside SEAL's
published models as reference rows. Written by ``python -m analysis.tables`` next to the
ablation tables when the sweep's jobs were scored with ``eval=seal`` or ``eval=paper_seal``."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from analysis.outfiles import write_csv, write_text
from analysis.stats import setting_keys
from srcore.evaluation.seal import MODELS_CSV, published_summaries
from srcore.evaluation.seal_scores import PAPER_NAMES, STATS


ROOT = Path(__file__).resolve().parent.parent  # the checkout


def _seal_roots(runs: pd.DataFrame) -> list[Path]:
    """Where the jobs' SEAL folder may be: each job's ``eval.seal_root`` as it stands and, when it
    is relative (the default ``../shared/data/SEAL`` is relative to the folder the job ran in,
    the checkout), resolved against the checkout, so the table does not depend on the folder
    this command runs in; then ``$SR_DATA_ROOT/SEAL``."""
    roots = []
    for config in runs.get("config", []):
        root = ((config or {}).get("eval") or {}).get("seal_root")
        if root:
            roots += [Path(root)] if Path(root).is_absolute() else [Path(root), ROOT / root]
    if os.environ.get("SR_DATA_ROOT"):
        roots.append(Path(os.environ["SR_DATA_ROOT"]) / "SEAL")
    return list(dict.fromkeys(roots))


def _seal_root(runs: pd.DataFrame) -> Path | None:
    return next((root for root in _seal_roots(runs) if (root / MODELS_CSV).is_file()), None)


def seal_table(runs: pd.DataFrame, metric: str = "psnr_y") -> pd.DataFrame | None:
    """Rows: the sweep's settings (finished runs, mean over seeds, ``n`` runs), then the published
    models (``source``); columns: SEAL's statistics of ``metric``. None without SEAL results."""
    cols = {s: f"seal/{metric}/{s}" for s in STATS}
    finished = runs[runs["state"] == "finished"] if "state" in runs else runs
    if not all(c in finished for c in cols.values()) or finished[list(cols.values())].isna().all().all():
        return None
    keys = setting_keys(finished)
    own = finished.dropna(subset=list(cols.values())).groupby(keys, sort=False, dropna=False)
    rows = [{"model": ", ".join(f"{k.removeprefix('swept.')}={v}" for k, v in
                                zip(keys, name if isinstance(name, tuple) else (name,))),
             "source": "this sweep", "n": len(g), **{s: g[c].mean() for s, c in cols.items()}}
            for name, g in own]
    root = _seal_root(finished)
    if root is not None:
        rows += [{"model": PAPER_NAMES.get(name, name), "source": "SEAL (published)", "n": None,
                  **{s: summary[f"{metric}/{s}"] for s in STATS}}
                 for name, summary in published_summaries(root).items()]
    return pd.DataFrame(rows)


def _markdown(table: pd.DataFrame) -> str:
    """The table in Markdown: the statistics to 3 decimals, ``n`` (runs) as a whole number and
    blank on the published rows (not 1.000 / nan)."""
    n = table["n"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    return table.assign(n=n).to_markdown(index=False, floatfmt=".3f", colalign=("left", "left", "right"))


def write_seal_table(runs: pd.DataFrame, out_dir: Path, title: str) -> str:
    """seal.md / seal.csv in ``out_dir`` (PSNR and SSIM on Y, crop 0); '' without SEAL results."""
    parts, frames = [], []
    for metric in ("psnr_y", "ssim_y"):
        table = seal_table(runs, metric)
        if table is None:
            return ""
        frames.append(table.assign(metric=metric))
        parts.append(f"**SEAL Set14-SE — {metric}** (S: mean over the 100 cases; AR: share of the cases at or above "
                     "the acceptance line; RPR: relative performance between the acceptance and excellence lines, "
                     "A / U over the accepted / other cases, I its interquartile range)\n\n"
                     + _markdown(table) + "\n")
    md = f"## {title} — SEAL\n\n" + "\n".join(parts)
    if _seal_root(runs) is None:
        tried = ", ".join(str(r) for r in _seal_roots(runs)) or "no eval.seal_root in the runs' configs"
        md += (f"\nSEAL's published models are missing: no {MODELS_CSV} found (tried {tried}); "
               "set $SR_DATA_ROOT to the data folder that holds SEAL/.\n")
    write_text(out_dir / "seal.md", md)
    write_csv(out_dir / "seal.csv", pd.concat(frames), index=False)
    return md
