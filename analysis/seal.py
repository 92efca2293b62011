"""`python -m analysis.seal`: evaluate finished jobs or weights files on SEAL's Set14-SE and
set them beside SEAL's published models.

    python -m analysis.seal outputs/sweeps/<sweep>/<job>                       # one job
    python -m analysis.seal <job> <job> ... --baseline <no-dropout job>         # + per-case gains
    python -m analysis.seal net_g.pth --backbone rrdb                           # BasicSR weights
    python -m analysis.seal <job> --seal-root /data/SEAL --device cuda

Per model it writes ``<job>/seal/seal.json`` (``<weights stem>_seal/`` beside a weights file,
or ``--out``): the per-image rows, the per-case means and the summary (PSNR-S, AR, RPR_I,
RPR_A, RPR_U on PSNR-Y and SSIM-Y, crop 0, with SEAL's line filter; see
``srcore.evaluation.seal_scores``). A model already evaluated is read back unless
``--force``. It prints the PSNR table with SEAL's seven published models as reference rows.
With ``--baseline``, each other model also gets ``gain_vs_degradation.png`` (per-case PSNR-Y
gain over the baseline against noise, blur and JPEG strength; ``analysis.seal_cases``) and
``cases.csv`` (every case's parameters and gain).

The SEAL folder defaults to ``$SR_DATA_ROOT/SEAL`` (``paths.data_root`` of conf/config.yaml).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from analysis.interpret import load_model
from analysis.outfiles import write_csv
from analysis.seal_cases import case_frame, gain_figure
from srcore.atomic import atomic_write
from srcore.evaluation.seal import case_means, check_seal_root, evaluate_seal, published_summaries
from srcore.evaluation.seal_scores import METRICS, PAPER_NAMES, STATS
from srcore.models import BACKBONES

RESULT = "seal.json"
CONFIG = Path(__file__).resolve().parent.parent / "conf" / "config.yaml"


def default_seal_root() -> Path:
    from omegaconf import OmegaConf
    return Path(OmegaConf.load(CONFIG).paths.data_root) / "SEAL"


def out_dir(target: Path) -> Path:
    return target / "seal" if target.is_dir() else target.parent / f"{target.stem}_seal"


def evaluate_target(target: Path, args: argparse.Namespace, out: Path) -> dict:
    """Evaluate one job folder / weights file (or read back its seal.json) -> the result dict."""
    path = out / RESULT
    if path.is_file() and not args.force:
        return json.loads(path.read_text())
    model, _ = load_model(target, args.backbone, args.num_feat, args.num_block)
    start, cpu = time.perf_counter(), time.process_time()
    rows, summary = evaluate_seal(model, args.seal_root, args.device, args.batch_size, args.workers,
                                  out / "images" if args.save_images else None)
    cases, means = case_means(rows)
    result = {"target": str(target), "seal_root": str(args.seal_root), "summary": summary,
              "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
              "cases": [{"case": c, **{m: float(means[m][k]) for m in METRICS}} for k, c in enumerate(cases)],
              "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: json.dump(result, f, indent=1), mode="w")
    return result


def seal_table(own: dict[str, dict], seal_root: Path, metric: str = "psnr_y") -> pd.DataFrame:
    """One row per model: ``own`` summaries (label -> flat summary) first, then SEAL's published
    models as reference rows (``source`` says which is which); columns ``STATS``."""
    rows = [{"model": label, "source": "this study", **{s: summ[f"{metric}/{s}"] for s in STATS}}
            for label, summ in own.items()]
    rows += [{"model": PAPER_NAMES.get(name, name), "source": "SEAL (published)",
              **{s: summ[f"{metric}/{s}"] for s in STATS}}
             for name, summ in published_summaries(seal_root).items()]
    return pd.DataFrame(rows)


def case_series(result: dict, metric: str = "psnr_y") -> pd.Series:
    """Per-case means of a seal.json result, indexed by case."""
    return pd.Series({c["case"]: c[metric] for c in result["cases"]}, name=metric).rename_axis("case")


def write_gains(result: dict, baseline: dict, out: Path, title: str) -> Path:
    """Per-case PSNR-Y gain over the baseline: cases.csv and gain_vs_degradation.png in out."""
    gain = (case_series(result) - case_series(baseline)).rename("gain_db")
    cases = case_frame(Path(result["seal_root"]))
    write_csv(out / "cases.csv", cases.join(gain, how="inner"))
    return gain_figure(cases, gain, out / "gain_vs_degradation.png", title, ylabel="PSNR-Y gain (dB)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m analysis.seal", description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="+", type=Path, help="job folders or weights files")
    ap.add_argument("--baseline", type=Path, help="job / weights file the per-case gains are measured against")
    ap.add_argument("--seal-root", type=Path, help="SEAL folder (default: $SR_DATA_ROOT/SEAL)")
    ap.add_argument("--backbone", choices=sorted(BACKBONES), help="for weights files without model_args")
    ap.add_argument("--num-feat", type=int)
    ap.add_argument("--num-block", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, help="same-size LR images per forward pass (default: by device)")
    ap.add_argument("--workers", type=int, default=1, help="threads scoring beside the network (0: none)")
    ap.add_argument("--out", type=Path, help="output folder (one target only)")
    ap.add_argument("--save-images", action="store_true", help="write the SR images too (slow)")
    ap.add_argument("--force", action="store_true", help="re-evaluate models that have a seal.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    args.seal_root = args.seal_root or default_seal_root()
    try:
        check_seal_root(args.seal_root)
    except FileNotFoundError as e:
        ap.error(f"{e}; pass --seal-root or set $SR_DATA_ROOT")
    targets = list(dict.fromkeys(args.targets + ([args.baseline] if args.baseline else [])))
    if args.out and len(targets) > 1:
        ap.error("--out takes one target (and no --baseline)")
    missing = [str(t) for t in targets if not t.exists()]
    if missing:
        ap.error(f"not found: {', '.join(missing)}")
    outs = {t: args.out or out_dir(t) for t in targets}
    results = {}
    for t in targets:
        results[t] = evaluate_target(t, args, outs[t])
        print(f"{t}: {outs[t] / RESULT} ({results[t]['seconds']:.0f} s)")
    own = {t.name if t.is_dir() else t.stem: r["summary"] for t, r in results.items()}
    for metric in METRICS:
        table = seal_table(own, args.seal_root, metric).rename(columns={"S": f"{metric.split('_')[0].upper()}-S"})
        print(f"\nSEAL Set14-SE — {metric} (crop 0, line filter on)\n")
        print(table.to_markdown(index=False, floatfmt=".2f" if metric == "psnr_y" else ".3f"))
    if args.baseline:
        for t in targets:
            if t != args.baseline:
                title = f"{t.name} vs {args.baseline.name}"
                print(f"gains: {write_gains(results[t], results[args.baseline], outs[t], title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
