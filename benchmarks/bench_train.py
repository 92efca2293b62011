"""Training speed of the engine (srcore.train.train): iterations per second of a paper-size
SRResNet (64 features x 16 blocks, batch 16, LR patch 32, x4) for the loop before the speed
work (a git worktree of commit 516f983, imported in a subprocess) and for today's loop at each
precision and memory format, all in one run, so the ratios compare like with like on a noisy
machine. Every configuration runs in its own process, in rounds that alternate the order; the
best round counts (noise only ever slows a run down). Two figures per configuration: wall-clock
it/s and iterations per CPU-second of the process (with ``--threads 1`` the latter is what
other processes on a shared machine disturb least).

    python benchmarks/bench_train.py                       # the table (`make bench` runs it)
    python benchmarks/bench_train.py --threads 1 --rounds 2 --iters 6
    python benchmarks/bench_train.py --configs new-fp32,new-bf16 --no-base

The degradation is bicubic (the cheapest), so the figures are the engine's: model step,
optimizer, EMA, data. The old loop comes from ``--base`` (default /tmp/wt_base: a worktree or
an extracted copy of commit 516f983; when missing it is extracted with ``git archive``, and
skipped where the commit is not in the clone).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_COMMIT = "516f983"

# name -> (precision, channels_last, compile); "old" runs the base worktree's loop (fp32).
CONFIGS = {
    "old-fp32": ("fp32", False, False),
    "new-fp32": ("fp32", False, False),
    "new-bf16": ("bf16", False, False),
    "new-fp16": ("fp16", False, False),
    "new-fp32-cl": ("fp32", True, False),
    "new-bf16-cl": ("bf16", True, False),
    "new-fp32-compile": ("fp32", False, True),
    "new-bf16-compile": ("bf16", False, True),
}
DEFAULT = "old-fp32,new-fp32,new-bf16,new-fp32-cl,new-bf16-cl"


def worker(args) -> dict:
    """One configuration, timed in this process: prints a JSON line with it/s."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from srcore.data import TrainPatches, builtin_images
    from srcore.degrade import Bicubic
    from srcore.models import build_model
    from srcore.train import TrainSettings, train

    precision, channels_last, compile_ = CONFIGS[args.worker]
    torch.manual_seed(0)
    model = build_model(args.backbone, num_feat=args.feat, num_block=args.blocks,
                        **({"num_grow_ch": args.feat // 2} if args.backbone == "rrdb" else {}))
    patches = TrainPatches(builtin_images("train"), patch=args.patch * 4, seed=0)
    total = args.warmup + args.iters + 1
    settings = dict(iterations=total, batch_size=args.batch, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0,
                    periods=(total,), restart_weights=(1,), eta_min=1e-7, ema_decay=0.999, seed=0,
                    log_every=total, val_every=total, ckpt_every=total, num_workers=0, device=args.device)
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    speed = dict(precision=precision, channels_last=channels_last, compile=compile_, tf32=args.tf32, cuda_graph=False,
                 superbatch=1, prefetch=0)
    if args.worker.startswith("new"):
        missing = [k for k in speed if k not in fields]
        if missing:
            raise SystemExit(f"this srcore has no {missing}: not the new loop")
        settings.update(speed)
    first, last = args.warmup, args.warmup + args.iters
    with tempfile.TemporaryDirectory() as tmp:
        stamps = _timed_train(train, model, patches, Bicubic(4), TrainSettings(**settings), Path(tmp) / "ckpt.pt",
                              first, last, args.device)
    (w0, c0), (w1, c1) = stamps[first], stamps[last]
    return {"config": args.worker, "it_s": args.iters / (w1 - w0), "it_cpu_s": args.iters / (c1 - c0)}


def _timed_train(train, model, patches, degrade, settings, checkpoint, first: int, last: int, device: str) -> dict:
    """Run ``train`` and return (wall clock, this process's CPU time) at the end of iterations
    ``first`` and ``last``; the device is synchronised at those two points only (the loop itself
    must not wait for it). On a shared CPU, CPU time per iteration (with one thread) is what
    noise from other processes changes least."""
    import torch

    stamps = {}

    def on_iteration(it):
        if it in (first, last):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps[it] = (time.perf_counter(), time.process_time())

    train(model, patches, degrade, settings, checkpoint, on_iteration=on_iteration)
    return stamps


# --------------------------------------------------------------------------- the GPU matrix
class FixedBatch:
    """A 'degradation' that returns one pre-made (hr, lr) batch: the model step alone."""

    def __init__(self, hr, lr):
        self.hr, self.lr = hr, lr

    def __call__(self, hr, g, crop=None):
        return self.hr, self.lr


PRECISION_ROWS = {"fp32": ("fp32", False), "tf32": ("fp32", True), "bf16": ("bf16", False), "fp16": ("fp16", False)}
# (precision, channels_last, compile, cuda_graph) per backbone, in this order
MATRIX = [("fp32", False, False, False), ("fp32", False, False, True), ("tf32", False, False, True),
          ("bf16", False, False, False), ("bf16", True, False, False), ("bf16", True, False, True),
          ("fp16", True, False, False), ("fp16", True, False, True), ("bf16", True, True, False),
          ("bf16", True, True, True)]
# the loop as before issue 25 (eager, one degradation call per batch, no prefetch) vs the defaults
ENGINES = {"before": dict(cuda_graph=False, superbatch=1, prefetch=0), "now": {}}


def matrix(args) -> list[dict]:
    """Training it/s of each backbone x configuration of ``MATRIX`` (filtered by ``--precisions``
    and ``--no-compile``), in this process, on the model step (a fixed pre-degraded batch), with
    the peak GPU memory; then a full iteration (the job's own degradation and data, as
    ``python -m sweeper`` runs it) vs that model step, for the loop as before and as now."""
    import torch

    from srcore.train import train
    from sweeper import build
    from sweeper.compose import compose

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start, rows = time.perf_counter(), []
    small = ["backbone.num_feat=8", "backbone.num_block=2", "train.batch_size=2", "train.patch_size=8",
             "degradation.gt_size=64"] if args.cpu_smoke else []
    first, last = args.warmup, args.warmup + args.iters
    cuda = args.device.startswith("cuda")

    def run(backbone, precision, channels_last, compile_, graph, degradation=None, engine=None):
        prec, tf32 = PRECISION_ROWS[precision]
        cfg = compose([f"backbone={backbone}", *small, f"train.device={args.device}",
                       *(["backbone.num_grow_ch=4"] if args.cpu_smoke and backbone == "rrdb" else [])])
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = build.model(cfg)
        deg = build.degradation(cfg)
        patches = build.train_patches(cfg, deg)
        settings = build.train_settings(cfg)
        total = last + 1
        settings.__dict__.update(iterations=total, periods=(total,), restart_weights=(1,), log_every=total,
                                 val_every=total, ckpt_every=total, precision=prec, tf32=tf32,
                                 channels_last=channels_last, compile=compile_, **{"cuda_graph": graph, **(engine or {})})
        if degradation != "job":
            g = torch.Generator().manual_seed(0)
            hr = patches[0].unsqueeze(0).repeat(settings.batch_size, 1, 1, 1).to(settings.device).float() / 255
            deg = FixedBatch(*deg(hr, g))
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            stamps = _timed_train(train, model, patches, deg, settings, Path(tmp) / "ckpt.pt", first, last,
                                  settings.device)
        peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
        return args.iters / (stamps[last][0] - stamps[first][0]), stamps[first][0] - t0, peak

    precisions = args.precisions.split(",")
    plan = [c for c in MATRIX if c[0] in precisions and (args.compile or not c[2])]
    for backbone in args.backbones.split(","):
        for precision, cl, compile_, graph in plan:
            row = {"backbone": backbone, "precision": precision, "channels_last": cl, "compile": compile_,
                   "cuda_graph": graph, "peak_gb": None}
            if time.perf_counter() - t_start > args.budget_s:
                rows.append({**row, "it_s": None, "note": "skipped: time budget"})
                continue
            try:
                it_s, warm, peak = run(backbone, precision, cl, compile_, graph)
                rows.append({**row, "it_s": it_s, "peak_gb": peak, "note": f"first {first} it {warm:.0f} s"})
            except Exception as e:  # one failing configuration must not hide the others
                rows.append({**row, "it_s": None, "note": f"failed: {type(e).__name__}: {str(e)[:80]}"})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    # The model step alone vs a full iteration with the job's degradation and data: the loop as it
    # was (eager, a degradation call per batch, no prefetch) and as it is (the defaults).
    for backbone in args.backbones.split(","):
        for precision in filter(None, args.outside_precisions.split(",")):
            cl = precision != "fp32"
            for name, engine in ENGINES.items():
                graph = engine.get("cuda_graph", True)
                step, _, _ = run(backbone, precision, cl, False, graph)
                full, _, peak = run(backbone, precision, cl, False, graph, degradation="job", engine=engine)
                what = ("eager, superbatch 1, no prefetch (as before)" if name == "before" else
                        "the defaults: cuda_graph, superbatch 8, prefetch 2")
                rows.append({"backbone": backbone, "precision": precision, "channels_last": cl, "compile": False,
                             "cuda_graph": graph, "peak_gb": peak, "it_s": full,
                             "note": f"full iteration, {what}: {step / full:.2f}x the model step's time "
                                     f"({step:.2f} it/s)"})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def print_matrix(rows: list[dict]) -> None:
    print("| backbone | precision | channels_last | compile | cuda_graph | it/s | peak GB | note |\n"
          "|---|---|---|---|---|---:|---:|---|")
    for r in rows:
        it_s = f"{r['it_s']:.2f}" if r["it_s"] else "-"
        peak = f"{r['peak_gb']:.2f}" if r.get("peak_gb") else "-"
        print(f"| {r['backbone']} | {r['precision']} | {r['channels_last']} | {r['compile']} | {r['cuda_graph']} | "
              f"{it_s} | {peak} | {r['note']} |")


def _ensure_base(base: Path) -> bool:
    if (base / "srcore" / "train.py").exists():
        return True
    try:  # the old tree's files only (git archive): the repository itself is left as it is
        base.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASE_COMMIT], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True, capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"no base worktree at {base} ({e}); the old loop is skipped", file=sys.stderr)
        return False


def run_config(name: str, args) -> dict | None:
    env = dict(os.environ)
    if name.startswith("old"):
        env["PYTHONPATH"] = str(args.base)
        cwd = str(args.base)
    else:
        env["PYTHONPATH"] = str(ROOT)
        cwd = str(ROOT)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, *args.passthrough]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=DEFAULT, help=f"comma-separated, of: {', '.join(CONFIGS)}")
    ap.add_argument("--backbone", default="srresnet", choices=["srresnet", "rrdb"])
    ap.add_argument("--feat", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=32, help="LR patch (HR = 4x)")
    ap.add_argument("--iters", type=int, default=6, help="timed iterations per configuration and round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="each configuration runs once per round; best counts")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--base", type=Path, default=Path("/tmp/wt_base"), help="worktree of the old code")
    ap.add_argument("--no-base", action="store_true", help="skip the old loop")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    g = ap.add_argument_group("the GPU matrix (benchmarks/gpu_check.sh)")
    g.add_argument("--matrix", action="store_true", help="backbone x precision x channels_last x compile, "
                   "in one process, at the paper's sizes (--cpu-smoke: tiny sizes)")
    g.add_argument("--backbones", default="srresnet,rrdb")
    g.add_argument("--precisions", default="fp32,tf32,bf16,fp16")
    g.add_argument("--no-compile", dest="compile", action="store_false")
    g.add_argument("--outside-precisions", default="bf16", help="precisions of the full-iteration rows")
    g.add_argument("--budget-s", type=float, default=300, help="configurations starting later are skipped")
    g.add_argument("--cpu-smoke", action="store_true", help="tiny network, batch and crops (checks the plumbing)")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.matrix:
        rows = matrix(args)
        print_matrix(rows)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    args.passthrough = [f"--backbone={args.backbone}", f"--feat={args.feat}", f"--blocks={args.blocks}",
                        f"--batch={args.batch}", f"--patch={args.patch}", f"--iters={args.iters}",
                        f"--warmup={args.warmup}", f"--device={args.device}",
                        *([f"--threads={args.threads}"] if args.threads else []), *(["--tf32"] if args.tf32 else [])]
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; allowed: {', '.join(CONFIGS)}")
    if args.no_base or not _ensure_base(args.base):
        names = [c for c in names if not c.startswith("old")]
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            res = run_config(name, args)
            if res:
                b = best.setdefault(name, {"it_s": 0.0, "it_cpu_s": 0.0})
                b["it_s"], b["it_cpu_s"] = max(b["it_s"], res["it_s"]), max(b["it_cpu_s"], res["it_cpu_s"])
                print(f"  round {r + 1}: {name:18s} {res['it_s']:.3f} it/s  {res['it_cpu_s']:.3f} it/CPU-s",
                      file=sys.stderr, flush=True)
    ref = "old-fp32" if "old-fp32" in best else ("new-fp32" if "new-fp32" in best else None)
    print(f"\n{args.backbone} {args.feat}x{args.blocks}, batch {args.batch}, LR patch {args.patch}, x4, "
          f"{args.device}, threads {args.threads or 'default'}, best of {args.rounds} round(s) x {args.iters} it")
    print(f"| config | it/s (wall) | vs {ref} | it per CPU-s | vs {ref} |\n|---|---:|---:|---:|---:|")
    for name in names:
        if name in best:
            b = best[name]
            r_wall = f"{b['it_s'] / best[ref]['it_s']:.2f}x" if ref else "-"
            r_cpu = f"{b['it_cpu_s'] / best[ref]['it_cpu_s']:.2f}x" if ref else "-"
            print(f"| {name} | {b['it_s']:.3f} | {r_wall} | {b['it_cpu_s']:.3f} | {r_cpu} |")
    if args.json:
        args.json.write_text(json.dumps(best, indent=1))


if __name__ == "__main__":
    main()
