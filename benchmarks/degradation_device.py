"""The Real-ESRGAN degradation on a device: does it wait for the device, is it the same for the
same seed, does it agree with the CPU, how fast is it, how many shapes does it make.

    python benchmarks/degradation_device.py --device cuda          # the GPU check's step 0
    python benchmarks/degradation_device.py --device cpu --batches 4 --gt-crop 192   # plumbing

Prints one Markdown table and, with ``--json``, writes its rows. The checks:

* **no sync**: on CUDA every batch after the first runs under
  ``torch.cuda.set_sync_debug_mode("error")``: a host read (``.item()``, ``nonzero``, a
  blocking copy) raises. On the CPU the same batches run under a dispatch-mode count of host
  reads (``_local_scalar_dense``, ``nonzero``, ``bincount``, ``masked_select``, ...). The paper's
  settings, then USM per batch (``usm_on_load`` off) and ``resize_bucket`` 8.
* **same seed**: the whole pipeline twice from one generator seed, LR max |difference|.
* **vs CPU**: the device's ``torch`` backend against the CPU ``torch`` backend with noise off
  (float rounding and the odd JPEG coefficient apart, equal), and against the OpenCV path with
  noise on (the noise each adds, std ratio per image; 1 in distribution).
* **speed**: batches/s of the paper's batch (16 GT crops of 400 px), ``resize_bucket`` 1 (the
  official sizes) and 8, after a warm-up; and the number of distinct stage-1/2 shapes.
* **super-batches** (``--many 1,4,8,16``): K batches (distinct crops) degraded in one
  ``Degradation.many`` call against the loop of K plain calls (today's path) on the same
  batches with the same draws, so the same work: per K, milliseconds per batch amortized (median
  of ``--many-rounds`` rounds after a warm-up, the two alternating; on a GPU wall-clock time, the
  device synchronised around each, on the CPU the process's CPU time) and the aten ops per batch dispatched by the image pipeline (a dispatch-mode
  count; the host's parameter draws, the same for both, counted apart), their ratios, and
  whether the super-batch waited for the device (CUDA: ``set_sync_debug_mode("error")``; CPU:
  host reads).
  ``--group-px`` (e.g. ``0,1048576,inf``): the padded groups' price
  (``RealESRGANDegradation.group_px``; default: the device's). ``--only-many`` skips the rest.

    python benchmarks/degradation_device.py --device cuda --many 1,4,8,16 --group-px default,0,inf
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.degrade_params import OpLog, PipelineOps, paper_realesrgan, photo_batch, photo_batches  # noqa: E402

def degradation(backend: str, gt_patch: int, **over):
    return paper_realesrgan(backend, gt_patch, **over)


def sync_free(deg, hr, seeds, device) -> str:
    """'yes' when no batch waited for the device, else what did."""
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            for s in seeds:
                p = deg.sample_params(hr.shape[0], torch.Generator().manual_seed(s))
                deg.paired_crop(*deg.apply(hr, p), p)
        except RuntimeError as e:
            return f"no: {str(e).splitlines()[0][:80]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return "yes (set_sync_debug_mode error)"
    reads = OpLog()
    for s in seeds:
        p = deg.sample_params(hr.shape[0], torch.Generator().manual_seed(s))  # host draws: not counted
        with reads:
            deg.paired_crop(*deg.apply(hr, p), p)
    return "yes (0 host reads, dispatch count)" if reads.host_reads == 0 else f"no: {reads.host_reads} host reads"


def lr_of(deg, hr, seed, quiet=False):
    p = deg.sample_params(hr.shape[0], torch.Generator().manual_seed(seed))
    if quiet:
        for key in ("noise1", "noise2"):
            p[key] = {**p[key], "sigma": torch.zeros_like(p[key]["sigma"]),
                      "poisson_scale": torch.zeros_like(p[key]["poisson_scale"])}
    return deg.apply(hr, p)[1]


def timed(deg, hr, seeds, device) -> float:
    """Median seconds per batch (apply + crop)."""
    times = []
    for s in seeds:
        p = deg.sample_params(hr.shape[0], torch.Generator().manual_seed(s))
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        deg.paired_crop(*deg.apply(hr, p), p)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gt-crop", type=int, default=400)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--many", default="", help="super-batch sizes K, e.g. 1,4,8,16 (K = 1: one call per batch)")
    ap.add_argument("--many-rounds", type=int, default=3, help="timed super-batches per K")
    ap.add_argument("--group-px", default="default", help="group_px values, e.g. default,0,inf")
    ap.add_argument("--only-many", action="store_true", help="only the super-batch rows")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    gt_patch = min(128, args.gt_crop // 4 * 4)
    hr_cpu = photo_batch(args.batch, args.gt_crop)
    hr = hr_cpu.to(device)
    rows = []
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"degradation on {dev_name}: batch {args.batch} x {args.gt_crop} px, torch {torch.__version__}",
          file=sys.stderr)

    if args.many:
        rows += many_rows(args, gt_patch, device)
    if args.only_many:
        return report(rows, dev_name, args.json)
    deg = degradation("torch", gt_patch)
    lr_of(deg, hr, 0)  # warm-up: constants, kernels, allocator
    rows.append(("no sync", sync_free(deg, hr, range(1, 1 + min(args.batches, 6)), device)))
    for label, over in (("USM per batch", {"usm_on_load": False}), ("resize_bucket=8", {"resize_bucket": 8})):
        dg = degradation("torch", gt_patch, **over)
        lr_of(dg, hr, 0)  # its constants
        rows.append((f"no sync, {label}", sync_free(dg, hr, range(1, 1 + min(args.batches, 6)), device)))
    a, b = lr_of(deg, hr, 7), lr_of(deg, hr, 7)
    rows.append(("same seed twice: LR max abs diff (levels)", f"{float((a - b).abs().max()) * 255:.3f}"))
    if device.type != "cpu":
        d, c = lr_of(deg, hr, 8, quiet=True).cpu(), lr_of(degradation("torch", gt_patch), hr_cpu, 8, quiet=True)
        rows.append((f"{device.type} vs CPU, torch backend, noise off: LR mean abs diff (levels)",
                     f"{float((d - c).abs().mean()) * 255:.3f} (max {float((d - c).abs().max()) * 255:.0f})"))
    ratios = []
    for seed in range(3):
        for backend, images in (("torch", hr), ("cv2", hr_cpu)):
            dg = degradation(backend, gt_patch)
            noise = (lr_of(dg, images, 20 + seed) - lr_of(dg, images, 20 + seed, quiet=True)).std((1, 2, 3)).cpu()
            ratios.append(noise)
    r = torch.cat(ratios[0::2]) / torch.cat(ratios[1::2])
    rows.append((f"noise on: std of the added noise, {device.type} torch / CPU OpenCV, per image",
                 f"mean {float(r.mean()):.3f}, range [{float(r.min()):.2f}, {float(r.max()):.2f}]"))
    for bucket in (1, 8):
        dg = degradation("torch", gt_patch, resize_bucket=bucket)
        lr_of(dg, hr, 0)
        sec = timed(dg, hr, range(100, 100 + args.batches), device)
        sizes = {_stage_sizes(dg, args.gt_crop, s) for s in range(500)}
        rows.append((f"resize_bucket={bucket}: batches/s (median); distinct (stage-1, stage-2) sizes in 500 draws",
                     f"{1 / sec:.2f}; {len(sizes)}"))
    return report(rows, dev_name, args.json)


def report(rows, dev_name: str, json_path: Path | None) -> int:
    print(f"| check ({dev_name}) | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if json_path:
        json_path.write_text(json.dumps([{"check": n, "result": v, "device": dev_name} for n, v in rows], indent=1))
    return 0


def many_rows(args, gt_patch: int, device: torch.device) -> list[tuple[str, str]]:
    """The super-batch rows (module doc): per group_px and K, ms per batch amortized and aten
    ops per batch of ``many`` and of the loop of K plain calls on the same K batches with the
    same draws (the same work), alternated round by round, and their ratios."""
    ks = sorted({int(k) for k in args.many.split(",")})
    hrs = [h.to(device) for h in photo_batches(max(ks), args.batch, args.gt_crop)]
    rows = []
    # on the CPU the process's CPU time (all threads): what other processes on a shared machine
    # disturb least; on a GPU wall-clock time, the device synchronised
    clock, unit = (time.process_time, "CPU ms") if device.type == "cpu" else (time.perf_counter, "ms")
    for gp in args.group_px.split(","):
        deg = degradation("torch", gt_patch)
        deg.group_px = None if gp == "default" else float(gp)
        label = f"group_px={gp}" + (f" ({'0 on the CPU' if device.type == 'cpu' else '2^20'})" if gp == "default" else "")
        for k in ks:
            def loop(seed: int, k=k):
                g = torch.Generator().manual_seed(seed)
                return [deg(hr, g) for hr in hrs[:k]]

            def many(seed: int, k=k):
                return deg.many(hrs[:k], torch.Generator().manual_seed(seed), 1)

            calls = {"loop": loop} if k == 1 else {"loop": loop, "many": many}
            ops, ms = {}, {}
            for name, call in calls.items():
                call(999)  # warm-up: constants, allocator
                with PipelineOps(deg) as log:
                    call(1000)
                ops[name] = (len(log.ops) / k, log.draws / k, log.host_reads)
            times = {name: [] for name in calls}
            for r in range(args.many_rounds):
                for name in (calls if r % 2 == 0 else list(calls)[::-1]):  # alternating order
                    _sync(device)
                    t0 = clock()
                    calls[name](2000 + r)
                    _sync(device)
                    times[name].append(clock() - t0)
            for name in calls:
                ms[name] = statistics.median(times[name]) / k * 1e3
            if k == 1:
                value = f"{ms['loop']:.2f} {unit}; {ops['loop'][0]:.0f} ops (+{ops['loop'][1]:.0f} host draws)"
            else:
                sync = many_sync_free(many, device) if device.type == "cuda" else f"{ops['many'][2]} host reads"
                value = (f"{ms['many']:.2f} {unit} vs {ms['loop']:.2f} ({ms['loop'] / ms['many']:.2f}x); "
                         f"{ops['many'][0]:.0f} ops vs {ops['loop'][0]:.0f} ({ops['loop'][0] / ops['many'][0]:.2f}x fewer) "
                         f"(+{ops['many'][1]:.0f} host draws); {sync}")
            rows.append((f"super-batch K={k}, {label}: ms per batch amortized, many vs loop of K calls (same draws); "
                         f"aten ops per batch; waits", value))
            print(value, f"[{label}, K={k}, {args.batch} x {args.gt_crop} px]", file=sys.stderr)
    return rows


def many_sync_free(call, device) -> str:
    torch.cuda.set_sync_debug_mode("error")
    try:
        call(3000)
    except RuntimeError as e:
        return f"waits: {str(e).splitlines()[0][:60]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "no sync"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stage_sizes(deg, crop: int, seed: int) -> tuple[int, int]:
    p = deg.sample_params(1, torch.Generator().manual_seed(seed))
    x = torch.empty(1, 3, crop, crop, device="meta")
    s1 = deg._random_resize(x, (crop, crop), p["resize1"], None, "torch").shape[-1]
    s2 = deg._random_resize(x, (crop, crop), p["resize2"], deg.scale, "torch").shape[-1]
    return s1, s2


if __name__ == "__main__":
    sys.exit(main())
