"""Benchmark of the batched Real-ESRGAN degradation and of its share of a training iteration.

    python benchmarks/bench_degradation.py            # both parts, defaults (~1.5 min on 2 CPU cores)
    python benchmarks/bench_degradation.py --quick    # fewer repetitions (< 1 min)
    python benchmarks/bench_degradation.py --part a --profile   # (a) only, plus cProfile / torch.profiler hotspots
    python benchmarks/bench_degradation.py --device cuda --amp --channels-last --model rrdb

(a) images/s of ``srcore.degrade.realesrgan.RealESRGANDegradation`` on batches of 16 GT crops (400x400,
    from real photographs) against the per-image NumPy/OpenCV pipeline of
    ``benchmarks/reference_pipeline.py`` on the same crops; ratio batched / per-image (target >= 3).
    Ours, as the training job runs it: the USM sharpening of the ground truth is done once per
    whole training image when the data is loaded (``prepare_images``, ``usm_on_load=True``; its
    one-off time is printed), each batch is cut from the sharpened images and degraded without
    USM. A second row times ours with the official per-batch USM of every crop
    (``usm_on_load=False``). The reference sharpens every crop (USM per crop, as the official code).
(b) the time of a full training iteration (built as the job does: prepare_images once (USM per
    whole image, not timed), then TrainPatches -> DataLoader -> uint8 to float ->
    degradation -> forward, L1, backward, Adam step, LR scheduler step, EMA update) divided by the
    bare model step (forward, L1, backward, Adam step on pre-made LR/HR tensors of the same shapes);
    SRResNet 64 ch / 16 blocks / x4 / channel dropout p=0.7 at the last conv, batch 16, LR 32 / HR 128
    (target <= 1.25).

The machines this runs on are shared and noisy: the two sides of each comparison are run
alternately (A B, B A, A B, ...) after a warm-up, and medians are reported, so that load changes hit
both alike. Compare the ratios, not absolute figures across runs. The batched pipeline draws its
resize factors once per batch (as the official code does), so its time varies from batch to batch
(a batch upscaled x1.5 in stage 1 costs several times a downscaled one); (a) therefore also prints
images/s from the mean time per batch, the long-run throughput.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks.reference_pipeline import ReferenceRealESRGAN  # noqa: E402
from srcore.data import KeyRange, TrainPatches, builtin_images, load_images  # noqa: E402
from srcore.models import build_model  # noqa: E402
from srcore.schedule import CosineAnnealingRestartLR, ema_update  # noqa: E402
from tests.degrade_params import paper_realesrgan_params  # noqa: E402

SUNHAYS = ROOT.parent / "shared" / "data" / "SunHays80"
TARGET_SPEEDUP = 3.0
TARGET_OVERHEAD = 1.25


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("a", "b", "all"), default="all", help="which benchmark(s) to run")
    p.add_argument("--batches", type=int, default=None,
                   help="(a) timed batches per side (default 10; 4 with --quick)")
    p.add_argument("--iters", type=int, default=None,
                   help="(b) timed iterations per side (default 8; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per side first (default 1)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (< 1 min on 2 CPU cores)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and OpenCV alike (default: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (the per-image reference runs on the CPU)")
    p.add_argument("--batch", type=int, default=16, help="batch size (the paper's: 16)")
    p.add_argument("--gt-crop", type=int, default=400, help="GT crop fed to the degradation (the paper's: 400)")
    p.add_argument("--gt-patch", type=int, default=128, help="HR patch after the paired crop (the paper's: 128)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--model", choices=("srresnet", "rrdb"), default="srresnet")
    p.add_argument("--amp", action="store_true", help="(b) autocast: bf16 on CPU, fp16 (+ GradScaler) on CUDA")
    p.add_argument("--channels-last", action="store_true", help="(b) channels-last model and inputs")
    p.add_argument("--workers", type=int, default=0, help="(b) DataLoader workers (the training default: 0)")
    p.add_argument("--data", default=None,
                   help=f"folder of training photographs (default: {SUNHAYS} if present, else the built-in set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true",
                   help="(a) also profile the batched pipeline (cProfile + torch.profiler, 6 batches)")
    args = p.parse_args(argv)
    quick = args.quick
    args.batches = args.batches or (4 if quick else 10)
    args.iters = args.iters or (3 if quick else 8)
    return args


def load_photographs(spec: str | None, min_side: int):
    if spec is None:
        spec = str(SUNHAYS) if SUNHAYS.is_dir() else "builtin"
    images = builtin_images("train") if spec == "builtin" else load_images(spec, "train")
    kept = [(n, im) for n, im in images if min(im.shape[:2]) >= min_side]
    if not kept:
        raise SystemExit(f"no image in {spec} is at least {min_side} px on its short side")
    return spec, kept


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(sides: dict, reps: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Run each side's ``fn(i)`` ``warmup`` times untimed, then ``reps`` times timed, alternating the
    order (A B, B A, ...) so that slow phases of a noisy machine hit both sides alike."""
    names = list(sides)
    for i in range(warmup):
        for name in names:
            sides[name](i)
    synchronize(device)
    times = {name: [] for name in names}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            synchronize(device)
            t0 = time.perf_counter()
            sides[name](warmup + r)
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def med(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    return f"[{min(values):.3f} .. {max(values):.3f}]"


def load_batched_class():
    try:
        from srcore.degrade.realesrgan import RealESRGANDegradation
    except Exception as exc:  # noqa: BLE001 - report why, then carry on with what can run
        return None, f"{type(exc).__name__}: {exc}"
    return RealESRGANDegradation, None


def paper_pipeline(batched_cls, args, **overrides):
    """The batched pipeline with the paper's parameters (conf/degradation/realesrgan.yaml)."""
    return batched_cls(**{**paper_realesrgan_params(), "scale": args.scale, "gt_patch": args.gt_patch, **overrides})


def make_gt_batches(images, crop: int, batch: int, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` uint8 (batch, 3, crop, crop) batches of training crops (hflip on), as the loader makes them."""
    patches = TrainPatches(images, crop, seed, hflip=True)
    return [torch.stack([patches[b * batch + i] for i in range(batch)]) for b in range(count)]


# --------------------------------------------------------------------------------------------
# (a) degradation throughput
# --------------------------------------------------------------------------------------------
REFERENCE_SIDE = "reference: per image, USM per crop"


def bench_degradation(args, device, images, batched_cls) -> dict:
    n = args.warmup + args.batches
    gt_u8 = make_gt_batches(images, args.gt_crop, args.batch, n, args.seed)
    gt_torch = [b.to(device).float().div_(255) for b in gt_u8]
    gt_numpy = [list(b.permute(0, 2, 3, 1).float().div_(255).numpy()) for b in gt_u8]  # per-image HWC float32
    reference = ReferenceRealESRGAN(scale=args.scale, gt_patch=args.gt_patch, usm=True)
    rng = np.random.default_rng(args.seed)
    sides = {REFERENCE_SIDE: lambda i: reference(gt_numpy[i], rng)}
    checks, prep = {}, None
    if batched_cls is not None:
        # as the job: USM once per whole training image at load, then per-batch degradation
        batched = paper_pipeline(batched_cls, args, usm=True, usm_on_load=True)
        t0 = time.perf_counter()
        prepared = batched.prepare_images(images)
        prep = (time.perf_counter() - t0, len(images), sum(im.shape[0] * im.shape[1] for _, im in images) / 1e6)
        pre_torch = [b.to(device).float().div_(255)
                     for b in make_gt_batches(prepared, args.gt_crop, args.batch, n, args.seed)]
        per_batch_usm = paper_pipeline(batched_cls, args, usm=True, usm_on_load=False)
        gen = torch.Generator()  # on the host, as the job draws (srcore.train._seed)
        gen.manual_seed(args.seed)
        gen2 = torch.Generator()
        gen2.manual_seed(args.seed)
        hr, lr = batched(pre_torch[0], gen)
        lq = args.gt_patch // args.scale
        checks = {"hr": tuple(hr.shape), "lr": tuple(lr.shape),
                  "lr 8-bit": bool(torch.equal((lr * 255).round(), lr * 255)),
                  "ok": tuple(hr.shape) == (args.batch, 3, args.gt_patch, args.gt_patch)
                  and tuple(lr.shape) == (args.batch, 3, lq, lq)}
        sides = {f"ours ({device.type}), USM once/image at load": lambda i: batched(pre_torch[i], gen),
                 f"ours ({device.type}), USM per batch": lambda i: per_batch_usm(gt_torch[i], gen2),
                 **sides}
    times = alternate(sides, args.batches, args.warmup, device)
    res = {"times": times, "checks": checks, "prep": prep}
    if args.profile and batched_cls is not None:
        res["profile"] = lambda: profile_batched(batched, pre_torch[:6], gen, device)
    return res


def profile_batched(batched, batches, gen, device) -> None:
    """Where the batched pipeline's time goes: cProfile (Python level, so OpenCV / NumPy calls and the
    pipeline's own functions show up) and torch.profiler (ATen operators)."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    prof = cProfile.Profile()
    prof.enable()
    for hr in batches:
        batched(hr, gen)
    synchronize(device)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(r"srcore/degrade|imageio", 25)
    stats.sort_stats("tottime").print_stats(15)
    print(f"\n    cProfile, batched pipeline, {len(batches)} batches:")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as tprof:
        for hr in batches:
            batched(hr, gen)
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n    torch.profiler, batched pipeline, {len(batches)} batches (top ATen operators by {key}; "
          "OpenCV calls are not seen here):")
    print(tprof.key_averages().table(sort_by=key, row_limit=20))


def report_degradation(res, args) -> None:
    times = res["times"]
    print(f"\n(a) degradation throughput: batches of {args.batch} GT crops {args.gt_crop}x{args.gt_crop} -> "
          f"HR {args.gt_patch} / LR {args.gt_patch // args.scale}; {args.batches} timed batches per side, "
          f"alternating, after {args.warmup} warm-up")
    print("    per batch, each side does:")
    print("      ours, USM once/image at load: the two-stage degradation + paired crop of crops cut from "
          "training images\n        USM-sharpened once when loaded (prepare_images, usm_on_load=True; "
          "as the training job runs it)")
    print("      ours, USM per batch:          USM of every crop + the same degradation (usm_on_load=False, "
          "as the official code)")
    print("      reference:                    per image: USM of every crop + the degradation + crop "
          "(NumPy/OpenCV, as the official per-image code)")
    if res.get("prep"):
        sec, count, mpix = res["prep"]
        print(f"    one-off at load: prepare_images (USM of {count} whole images, {mpix:.1f} Mpixel) "
              f"{sec:.2f} s, not in the timings below")
    print(f"    {'pipeline':<40} {'median s/batch':>14} {'images/s':>9}   {'range s/batch':<16} "
          f"images/s (mean)")
    for name, t in times.items():
        print(f"    {name:<40} {med(t):>14.3f} {args.batch / med(t):>9.1f}   {spread(t):<16} "
              f"{args.batch * len(t) / sum(t):.1f}")
    ref = times.get(REFERENCE_SIDE)
    for name, t in times.items():
        if name == REFERENCE_SIDE or ref is None:
            continue
        ratio = med(ref) / med(t)
        paired = [r / a for a, r in zip(t, ref)]
        verdict = "meets" if ratio >= TARGET_SPEEDUP else "MISSES"
        print(f"    speed-up {name} / reference (ratio of medians): {ratio:.2f}x  "
              f"(median of paired ratios {med(paired):.2f}x; ratio of means "
              f"{sum(ref) / sum(t):.2f}x)  -> {verdict} the target >= {TARGET_SPEEDUP:g}x")
    if res["checks"]:
        print(f"    batched output check: {res['checks']}")


# --------------------------------------------------------------------------------------------
# (b) training iteration vs bare model step
# --------------------------------------------------------------------------------------------
def build_backbone(name: str):
    """The paper's networks with their last-conv dropout (p 0.7 SRResNet, 0.5 RRDB)."""
    p = 0.7 if name == "srresnet" else 0.5
    return build_model(name, upscale=4, regularizers=[{"name": "dropout", "position": "last", "p": p, "kind": "channel"}])


def bench_train_step(args, device, images, batched_cls) -> dict:
    torch.manual_seed(args.seed)
    model = build_backbone(args.model).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0)
    sched = CosineAnnealingRestartLR(opt, (250_000, 250_000), (1, 1), 1e-7)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if args.amp else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type) if args.amp and amp_dtype == torch.float16 else None

    def model_step(lr_img, hr_img):
        with autocast():
            loss = F.l1_loss(model(lr_img), hr_img)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss

    # as the job (sweeper/job.py): USM once per whole training image, then per-batch degradation
    degrade = paper_pipeline(batched_cls, args, usm=True, usm_on_load=True)
    gen = torch.Generator()  # on the host, as the job draws (srcore.train._seed)
    gen.manual_seed(args.seed)
    patches = TrainPatches(degrade.prepare_images(images), args.gt_crop, args.seed, hflip=True)
    loader = DataLoader(patches, batch_size=args.batch, sampler=KeyRange(0, 10**9, args.batch),
                        num_workers=args.workers, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=False, generator=torch.Generator().manual_seed(args.seed))
    batches = iter(loader)
    parts = {"data": [], "degrade": [], "step+sched+ema": []}

    def full_iteration(_):
        # the body of srcore.train.train's loop, with the time of each part recorded
        t0 = time.perf_counter()
        hr_uint8 = next(batches)  # crops of the USM-sharpened images
        hr = hr_uint8.to(device, non_blocking=True).float().div_(255)
        synchronize(device)
        t1 = time.perf_counter()
        hr_target, lr_img = degrade(hr, gen)
        if args.channels_last:
            lr_img = lr_img.contiguous(memory_format=torch.channels_last)
        synchronize(device)
        t2 = time.perf_counter()
        loss = model_step(lr_img, hr_target)
        sched.step()
        ema_update(ema, model, 0.999)
        loss.item()
        t3 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[key].append(dt)

    lq = args.gt_patch // args.scale
    g = torch.Generator().manual_seed(args.seed + 1)
    lr_fixed = torch.rand(args.batch, 3, lq, lq, generator=g).to(device).contiguous(memory_format=memory_format)
    hr_fixed = torch.rand(args.batch, 3, args.gt_patch, args.gt_patch, generator=g).to(device)

    def bare_step(_):
        model_step(lr_fixed, hr_fixed).item()

    times = alternate({"full training iteration": full_iteration, "bare model step": bare_step},
                      args.iters, args.warmup, device)
    timed_parts = {k: v[args.warmup:] for k, v in parts.items()}
    return {"times": times, "parts": timed_parts}


def report_train_step(res, args) -> None:
    times, parts = res["times"], res["parts"]
    cfg = (f"{args.model}, batch {args.batch}, LR {args.gt_patch // args.scale} / HR {args.gt_patch}, "
           f"GT crops {args.gt_crop}, amp={'on' if args.amp else 'off'}, "
           f"channels_last={'on' if args.channels_last else 'off'}, workers={args.workers}")
    print(f"\n(b) training iteration vs bare model step ({cfg}); {args.iters} timed iterations per side, "
          f"alternating, after {args.warmup} warm-up")
    print("    built as the job: prepare_images once (USM of each whole training image), then per "
          "iteration: crops -> per-batch degradation (no USM) -> model step")
    print(f"    {'':<36} {'median s/iter':>14} {'iter/s':>9}   range s/iter")
    for name, t in times.items():
        print(f"    {name:<36} {med(t):>14.3f} {1 / med(t):>9.3f}   {spread(t)}")
    print("    parts of the full iteration (medians): "
          + ", ".join(f"{k} {med(v):.3f} s" for k, v in parts.items()))
    full, bare = times["full training iteration"], times["bare model step"]
    ratio = med(full) / med(bare)
    paired = [f / b for f, b in zip(full, bare)]
    verdict = "meets" if ratio <= TARGET_OVERHEAD else "MISSES"
    print(f"    full / bare (ratio of medians): {ratio:.3f}  (median of paired ratios {med(paired):.3f})  "
          f"-> {verdict} the target <= {TARGET_OVERHEAD:g}")


# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    if args.gt_patch % args.scale:
        raise SystemExit(f"--gt-patch {args.gt_patch} is not a multiple of --scale {args.scale}")
    spec, images = load_photographs(args.data, args.gt_crop)
    batched_cls, why = load_batched_class()

    t_start = time.perf_counter()
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, OpenCV {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"device {device}{gpu}")
    print(f"photographs: {spec} ({len(images)} images >= {args.gt_crop} px)")
    if batched_cls is None:
        print(f"srcore.degrade.realesrgan.RealESRGANDegradation is unavailable ({why}): only the reference is timed")

    if args.part in ("a", "all"):
        res = bench_degradation(args, device, images, batched_cls)
        report_degradation(res, args)
        if "profile" in res:
            res["profile"]()
    if args.part in ("b", "all"):
        if batched_cls is None:
            print("\n(b) skipped: it needs the batched degradation")
        else:
            report_train_step(bench_train_step(args, device, images, batched_cls), args)
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")
    return 0 if batched_cls is not None else 2


if __name__ == "__main__":
    sys.exit(main())
