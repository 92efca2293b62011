"""How long `make tables` takes on a big sweep: 1,000 runs' offline wandb logs.

    python benchmarks/bench_tables.py [--runs 1000] [--cache DIR]

The logs are written by the real wandb library (offline mode), laid out as jobs write
them (<sweep>/<job>/wandb/offline-run-*/run-<id>.wandb plus the per-image table file),
with the summary keys and per-image table a job logs: 8 test degradations x 3 test sets x
3 metrics, 5 images per set. The grid: 5 dropout positions x 10 probabilities x 20 seeds.
Generating them takes minutes (wandb start-up per run) and is cached in --cache; the
figure printed is the time to read every run and build every table and figure, in one
process, as `python -m analysis.tables` does. Target: <= 10 s on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = ["Set5", "Set14", "BSD68"]
DEGS = ["clean", "blur", "noise", "jpeg", "blur+noise", "blur+jpeg", "noise+jpeg", "blur+noise+jpeg"]
POSITIONS = ["none", "first", "b8", "half", "last"]
IMAGES = 5


def grid(n: int):
    combos = list(itertools.product(POSITIONS, [0.1 * i for i in range(1, 11)], range(20)))
    return [(pos, round(p, 1), seed) for pos, p, seed in combos][:n]


def generate(sweep: Path, n: int) -> None:
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_ERROR_REPORTING="false")
    import wandb

    rng = np.random.default_rng(0)
    for i, (pos, p, seed) in enumerate(grid(n)):
        job = f"dropout.p={p},dropout.position={pos},seed={seed}"
        job_dir = sweep / job
        if list(job_dir.glob("wandb/offline-run-*/run-*.wandb")):
            continue
        job_dir.mkdir(parents=True, exist_ok=True)
        tags = [f"dropout.p={p}", f"dropout.position={pos}", f"seed={seed}"]
        run = wandb.init(project="bench", group=sweep.name, name=job, tags=tags, dir=str(job_dir),
                         config={"dropout": {"p": p, "position": pos}, "seed": seed},
                         settings=wandb.Settings(console="off", x_disable_stats=True))
        gain = 0.0 if pos == "none" else 0.1 * p
        rows, summary = [], {}
        for s, d in itertools.product(SETS, DEGS):
            values = 25 + gain + rng.normal(0, 0.5, IMAGES)
            rows += [[s, f"img{k}", d, float(v), float(v + 1.5), 0.8] for k, v in enumerate(values)]
            summary[f"test/{s}/{d}/psnr"] = float(values.mean())
            summary[f"test/{s}/{d}/psnr_y"] = float(values.mean() + 1.5)
            summary[f"test/{s}/{d}/ssim_y"] = 0.8
        run.summary.update(summary)
        run.log({"test/per_image": wandb.Table(columns=["set", "image", "degradation", "psnr", "psnr_y", "ssim_y"],
                                               data=rows)})
        run.finish()
        if (i + 1) % 100 == 0:
            print(f"  generated {i + 1}/{n}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/sr-bench-tables"))
    args = ap.parse_args()
    sweep = args.cache / "sweeps" / f"bench{args.runs}"
    t0 = time.perf_counter()
    generate(sweep, args.runs)
    print(f"logs ready in {time.perf_counter() - t0:.0f} s ({sweep})")

    from analysis.tables import main as tables_main
    t0 = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull
        try:
            rc = tables_main([str(sweep)])
        finally:
            sys.stdout = stdout
    elapsed = time.perf_counter() - t0
    assert rc == 0
    print(f"{args.runs} runs -> every table and figure: {elapsed:.2f} s (target <= 10 s)")


if __name__ == "__main__":
    main()
