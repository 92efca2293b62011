"""A fused group against the same jobs run one at a time (issue 26), on this machine:

1. the engine: 4 jobs of ``preset=demo`` (seeds 0, 1 x dropout p 0.1, 0.5; the demo's network,
   batch and crops, Real-ESRGAN degradation) for ``--iters`` iterations, fused
   (``srcore.train_group``) and alone (``srcore.train.train``): each job's loss at every
   iteration (largest relative gap) and its final weights (largest gap, relative to the
   tensor's norm, and in absolute terms); for scale, the same gaps between the jobs alone and
   the jobs alone in the other memory format (NCHW): a change of float rounding only;
2. the command line: the same 4-job grid through ``python -m sweeper -m`` fused and with
   ``hydra.launcher.fuse=off``, at the demo's 400 iterations: each sweep's wall time, its total
   training it/s (4 x 400 / the training seconds), the largest test-metric gap per job, and
   whether ``python -m analysis.tables`` prints the same PSNR table for both.

    python benchmarks/bench_fused.py [--iters 50] [--skip-cli] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GRID = ["seed=0,1", "dropout.p=0.1,0.5"]
JOBS = [("seed=0", "dropout.p=0.1"), ("seed=1", "dropout.p=0.1"), ("seed=0", "dropout.p=0.5"),
        ("seed=1", "dropout.p=0.5")]


def engine(iters: int) -> dict:
    import torch

    from srcore.train import train
    from srcore.train_group import GroupJob, train_group
    from sweeper import build
    from sweeper.compose import compose

    def make(overrides, tmp: Path, name: str, extra=()):
        cfg = compose(["preset=demo", *overrides, f"train.iterations={iters}", f"train.scheduler.periods=[{iters}]",
                       "train.log_every=1", f"train.val_every={iters}", f"train.ckpt_every={iters}", *extra])
        settings, deg = build.train_settings(cfg), build.degradation(cfg)
        patches = build.train_patches(cfg, deg)
        torch.manual_seed(cfg.seed)
        losses = {}
        job = GroupJob(build.model(cfg), patches, deg, settings, tmp / f"{name}.pt",
                       log_metrics=lambda m, step: losses.__setitem__(step, m["train/loss"]) if "train/loss" in m
                       else None)
        return job, losses

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        alone, t0 = [], time.perf_counter()
        for k, o in enumerate(JOBS):
            job, losses = make(o, tmp, f"alone{k}")
            train(job.model, job.patches, job.degrade, job.cfg, job.checkpoint, log_metrics=job.log_metrics)
            alone.append((losses, {n: v.clone() for n, v in job.model.state_dict().items()}))
        alone_s = time.perf_counter() - t0
        nchw = []  # the same jobs alone in the other memory format: the scale of float-rounding differences
        for k, o in enumerate(JOBS):
            job, losses = make(o, tmp, f"nchw{k}", ["train.channels_last=false"])
            train(job.model, job.patches, job.degrade, job.cfg, job.checkpoint, log_metrics=job.log_metrics)
            nchw.append((losses, {n: v.clone() for n, v in job.model.state_dict().items()}))
        pairs = [make(o, tmp, f"fused{k}") for k, o in enumerate(JOBS)]
        t0 = time.perf_counter()
        train_group([j for j, _ in pairs])
        fused_s = time.perf_counter() - t0
    fused = [(losses, j.model.state_dict()) for j, losses in pairs]

    def gaps(runs):
        loss = max(abs(l[s] - a[s]) / abs(a[s]) for (l, _), (a, _) in zip(runs, alone) for s in a)
        rel = max(((v - w[n]).norm() / w[n].norm().clamp_min(1e-12)).item()
                  for (_, m), (_, w) in zip(runs, alone) for n, v in m.items())
        absolute = max((v - w[n]).abs().max().item() for (_, m), (_, w) in zip(runs, alone) for n, v in m.items())
        return loss, rel, absolute

    loss_gap, rel, absolute = gaps(fused)
    nchw_loss, nchw_rel, nchw_abs = gaps(nchw)
    bit = all(torch.equal(m[n], w[n]) for (_, m), (_, w) in zip(fused, alone) for n in w)
    return {"iterations": iters, "max_rel_loss_gap": loss_gap, "max_rel_weight_gap": rel,
            "max_abs_weight_gap": absolute, "bit_identical": bit, "alone_s": alone_s, "fused_s": fused_s,
            "nchw_rel_loss_gap": nchw_loss, "nchw_rel_weight_gap": nchw_rel, "nchw_abs_weight_gap": nchw_abs}


def sweep(out: Path, extra: list[str], threads: int) -> tuple[float, Path]:
    env = {**os.environ, "SR_OUTPUT_ROOT": str(out), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_ERROR_REPORTING": "false"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeper", "-m", "preset=demo", *GRID, f"train.threads={threads}",
                    "sweep_name=bench_fused", *extra], cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    return wall, out / "sweeps" / "bench_fused"


def cli(threads: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        runs = {}
        for name, extra in (("fused", []), ("alone", ["hydra.launcher.fuse=off"])):
            wall, sweep_dir = sweep(Path(d) / name, extra, threads)
            res = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}
            train_s = (max(r["train_seconds"] for r in res.values()) if name == "fused"
                       else sum(r["train_seconds"] for r in res.values()))
            iters = sum(r["config"]["train"]["iterations"] for r in res.values())
            subprocess.run([sys.executable, "-m", "analysis.tables", str(sweep_dir)], cwd=ROOT, check=True,
                           capture_output=True)
            table = (sweep_dir / "tables" / "psnr.md").read_text()
            runs[name] = {"wall_s": wall, "train_s": train_s, "it_s": iters / train_s, "results": res,
                          "table": table}
        gaps = [max(abs(v - runs["alone"]["results"][n]["metrics"][k]) for k, v in r["metrics"].items())
                for n, r in runs["fused"]["results"].items()]
        return {"fused_wall_s": runs["fused"]["wall_s"], "alone_wall_s": runs["alone"]["wall_s"],
                "fused_train_it_s": runs["fused"]["it_s"], "alone_train_it_s": runs["alone"]["it_s"],
                "max_metric_gap_db": max(gaps), "same_table": runs["fused"]["table"] == runs["alone"]["table"],
                "table": runs["fused"]["table"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-cli", action="store_true")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    e = engine(args.iters)
    print(f"engine, 4 demo jobs x {e['iterations']} iterations: loss max relative gap {e['max_rel_loss_gap']:.2e}; "
          f"final weights max relative gap {e['max_rel_weight_gap']:.2e}, max absolute {e['max_abs_weight_gap']:.2e}; "
          f"bit-identical {e['bit_identical']}; alone {e['alone_s']:.1f} s, fused {e['fused_s']:.1f} s "
          f"({e['alone_s'] / e['fused_s']:.2f}x)", flush=True)
    print(f"  for scale, the same jobs alone in NCHW instead of channels_last: loss {e['nchw_rel_loss_gap']:.2e}, "
          f"weights relative {e['nchw_rel_weight_gap']:.2e}, absolute {e['nchw_abs_weight_gap']:.2e}", flush=True)
    if args.skip_cli:
        return
    c = cli(args.threads)
    print(f"command line, 4 demo jobs x 400 iterations: fused sweep {c['fused_wall_s']:.0f} s wall, "
          f"{c['fused_train_it_s']:.2f} it/s in total; one at a time {c['alone_wall_s']:.0f} s, "
          f"{c['alone_train_it_s']:.2f} it/s ({c['fused_train_it_s'] / c['alone_train_it_s']:.2f}x); "
          f"test metrics max gap {c['max_metric_gap_db']:.1e} dB; same PSNR table: {c['same_table']}")
    print(c["table"])
    if not math.isfinite(c["max_metric_gap_db"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
