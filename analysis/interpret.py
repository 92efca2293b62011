"""`python -m analysis.interpret`: channel saliency, channel ablation and deep degradation
representations for one model, a pair side by side, or every job of a sweep.

    python -m analysis.interpret outputs/sweeps/<sweep>/<job>                 # one job
    python -m analysis.interpret <job without dropout> <job with dropout>    # a pair
    python -m analysis.interpret --sweep outputs/sweeps/<sweep>              # every finished job
    python -m analysis.interpret net_g.pth --backbone srresnet --data /path/Set5   # BasicSR weights

Per model it writes ``<job>/interpret/`` (or ``--out``): ``csm.png`` (channel saliency per
layer, the paper's heatmap), ``ablation.png`` (sorted PSNR drop per removed channel),
``ddr.png`` (2-D embedding of the layer's features, coloured by test degradation) and
``interpretation.json`` (per-layer evenness: Gini, normalised entropy, coefficient of
variation; the Calinski-Harabasz index of the degradation clusters). ``make tables`` shows
those numbers next to PSNR. For a pair, ``pair.png`` puts both CSM heatmaps side by side.
"""
from __future__ import annotations

import argparse
import json
import textwrap
import sys
from pathlib import Path

import numpy as np

from analysis.figures import pyplot, save_figure
from srcore.atomic import atomic_write
from srcore.data import load_images
from srcore.evaluation import TEST_DEGRADATIONS
from srcore.interpretation import interpret_model, layer_names
from srcore.models import BACKBONES, load_official
from srcore.models.checkpoint import load_model as load_model_file

RESULT = "interpretation.json"


def load_model(target: Path, backbone: str | None, num_feat: int | None, num_block: int | None):
    """(model, config or None) from a job folder (model.pt, which carries its build arguments,
    + .hydra/config.yaml) or a weights file: this project's, or a BasicSR / official one
    (params / params_ema) given its ``backbone``, whose settings are read off the weights
    (``num_feat`` / ``num_block`` override them). Loaded with weights_only."""
    try:
        if target.is_dir():
            from omegaconf import OmegaConf
            cfg = OmegaConf.load(target / ".hydra" / "config.yaml")
            return load_model_file(target / "model.pt"), cfg
        if not backbone:
            return load_model_file(target), None
        overrides = {k: v for k, v in (("num_feat", num_feat), ("num_block", num_block)) if v}
        return load_official(target, backbone, **overrides), None
    except (ValueError, FileNotFoundError) as e:  # CheckpointError among them: one line, no traceback
        raise SystemExit(f"error: {e}") from None


def interpret(model, images: list[tuple[str, np.ndarray]], layer: str, embed: str, degradations: list[str],
              out_dir: Path, title: str) -> dict:
    """Everything for one model; figures and interpretation.json into out_dir."""
    result, emb, labels = interpret_model(model, images, layer, embed, degradations, title)
    write_result(result, emb, labels, out_dir)
    return result


def write_result(result: dict, emb: np.ndarray, labels: np.ndarray, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _figures(result, emb, labels, out_dir)
    atomic_write(out_dir / RESULT, lambda f: json.dump(result, f, indent=1), mode="w")


def csm_matrix(result: dict) -> tuple[list[str], np.ndarray]:
    """Row-normalised channel saliency, one row per layer; layers narrower than the widest (a
    transformer's embed_dim next to its 64-channel upsampler) are padded with NaN."""
    names = list(result["csm"])
    width = max(len(v) for v in result["csm"].values())
    rows = [np.pad(np.asarray(v, dtype=float) / max(np.max(v), 1e-30), (0, width - len(v)), constant_values=np.nan)
            for v in result["csm"].values()]
    return names, np.stack(rows)


def _figures(result: dict, emb: np.ndarray, labels: np.ndarray, out_dir: Path) -> None:
    plt = pyplot()
    names, m = csm_matrix(result)
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(names) + 1.5))
    im = ax.imshow(m, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("channel")
    ax.set_title(f"Channel saliency (row-normalised) — {result['title']}")
    fig.colorbar(im, ax=ax)
    save_figure(fig, out_dir / "csm.png")

    drops = np.sort(np.asarray(result["ablation_drop_db"]))[::-1]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(drops, marker=".")
    ax.set_xlabel("channel (sorted)")
    ax.set_ylabel("PSNR drop (dB)")
    ax.set_title(f"Channel ablation at {result['layer']}")
    save_figure(fig, out_dir / "ablation.png")

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for k, deg in enumerate(result["degradations"]):
        pts = emb[labels == k]
        ax.scatter(pts[:, 0], pts[:, 1], s=8, label=deg)
    ax.set_title(f"DDR at {result['layer']} ({result['embedding']}), CHI {result['chi_2d']:.4g}")
    ax.legend(fontsize=6, markerscale=2)
    save_figure(fig, out_dir / "ddr.png")


def pair_figure(a: dict, b: dict, out: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.25 * len(a["csm"]) + 1.5))
    for ax, r in zip(axes, (a, b)):
        names, m = csm_matrix(r)
        ax.imshow(m, aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(names)), names)
        ev = r["evenness"][r["layer"]]
        ax.set_title(f"{textwrap.fill(r['title'], 70)}\n{r['layer']}: Gini {ev['gini']:.3f}, entropy {ev['entropy']:.3f}; "
                     f"CHI {r['chi']:.4g}", fontsize=8)
    save_figure(fig, out)


def log_to_wandb(job_dir: Path, cfg, result: dict, out_dir: Path) -> str | None:
    """Add the scalars and figures to the job's own wandb run (same id, resumed). Offline, the
    resume writes a second run folder; the readers merge it into the run (analysis.wandb_offline)."""
    import os

    from analysis.wandb_offline import read_runs
    runs = read_runs(job_dir, history=False, skip_corrupt=True)
    if not runs:
        return None
    run_id = runs[-1].run_id
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb
    ev = result["evenness"][result["layer"]]
    prefix = f"interpret/{result['layer']}"
    with wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode, id=run_id,
                    resume="allow", dir=str(job_dir), settings=wandb.Settings(console="off", x_disable_stats=True)) as run:
        run.summary.update({f"{prefix}/gini": ev["gini"], f"{prefix}/entropy": ev["entropy"], f"{prefix}/cv": ev["cv"],
                            f"{prefix}/chi": result["chi"], f"{prefix}/chi_2d": result["chi_2d"]})
        run.log({f"interpret/{name}": wandb.Image(str(out_dir / f"{name}.png")) for name in ("csm", "ablation", "ddr")})
    return run_id


def summary_line(r: dict) -> str:
    ev = r["evenness"][r["layer"]]
    return (f"{r['title']}: layer {r['layer']}: Gini {ev['gini']:.4f}, normalised entropy {ev['entropy']:.4f}, "
            f"CV {ev['cv']:.4f}; CHI {r['chi']:.4g} (features), {r['chi_2d']:.4g} ({r['embedding']} 2-D); "
            f"max ablation drop {max(r['ablation_drop_db']):.3f} dB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.interpret", description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", type=Path, help="job folders or weights files (two: a pair)")
    ap.add_argument("--sweep", type=Path, help="every finished job of this sweep folder")
    ap.add_argument("--data", default=None, help="test images: 'builtin' or a folder (default: the job's first test set)")
    ap.add_argument("--max-images", type=int, default=4)
    ap.add_argument("--layer", default="last", help="layer for ablation and DDR: first, b<k>, hr, last")
    ap.add_argument("--embed", default="tsne", choices=["tsne", "pca"])
    ap.add_argument("--degradations", default=",".join(TEST_DEGRADATIONS))
    ap.add_argument("--backbone", choices=sorted(BACKBONES))
    ap.add_argument("--num-feat", type=int)
    ap.add_argument("--num-block", type=int)
    ap.add_argument("--out", type=Path, help="output folder (default: <job>/interpret)")
    ap.add_argument("--no-wandb", action="store_true", help="do not add the results to the job's wandb run")
    args = ap.parse_args(argv)
    targets = list(args.targets)
    if args.sweep:
        targets += sorted(p.parent for p in args.sweep.glob("*/model.pt"))
    if not targets:
        ap.error("give a job folder, a weights file, two of them, or --sweep DIR")
    degradations = [d for d in args.degradations.split(",") if d]
    bad = [d for d in degradations if d not in TEST_DEGRADATIONS]
    if bad:
        ap.error(f"--degradations: {bad} unknown; allowed: {', '.join(TEST_DEGRADATIONS)}")
    results = []
    for target in targets:
        if not target.exists():
            ap.error(f"{target} does not exist")
        model, cfg = load_model(target, args.backbone, args.num_feat, args.num_block)
        if args.layer not in layer_names(model):
            ap.error(f"--layer {args.layer!r} is unknown; allowed: {', '.join(layer_names(model))}")
        spec = args.data or (str(next(iter(cfg.data.test_sets.values()))) if cfg is not None else "builtin")
        images = load_images(spec, "test", args.max_images)
        out = args.out / target.name if args.out and len(targets) > 1 else (args.out or
                                                                            (target if target.is_dir() else target.parent) / "interpret")
        results.append(interpret(model, images, args.layer, args.embed, degradations, out, target.name))
        print(summary_line(results[-1]))
        if cfg is not None and not args.no_wandb:
            run_id = log_to_wandb(target, cfg, results[-1], out)
            if run_id:
                print(f"  logged to wandb run {run_id}")
    if len(results) == 2 and not args.sweep:
        out = (args.out or targets[1].parent) / "pair.png"
        pair_figure(results[0], results[1], out)
        print(f"side by side: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
