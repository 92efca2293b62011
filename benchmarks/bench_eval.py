"""Evaluation time of one job, before and after issue 20 (``make bench-eval``).

One job's evaluation: the demo SRResNet (32 features, 4 blocks, x4, random weights: the
network's cost does not depend on them) on Set5 + Set14 + BSD68 under the paper's eight test
degradations (87 images x 8 = 696 SR images), timed around ``evaluate()`` as the job times it
(the HR test images are already loaded). Each measurement runs in a fresh process:

- ``old``: the code before issue 20 (commit 516f983, checked out with ``git worktree`` in
  ``--base-dir``): the test LR images rebuilt in the job, one image at a time, metrics in line;
- ``cold``: today's code with an empty test-LR cache (the first job of a sweep fills it);
- ``warm``: today's code with that cache filled (every later job, of this sweep or another);
- ``net``: the network's forward passes alone over the same 696 LR images (today's batching),
  the floor of any CPU evaluation: what ``old`` and ``warm`` spend beyond it is what the
  evaluation itself costs, and all that a GPU would leave of them.

Modes run interleaved, ``--reps`` times each; the table shows the fastest of each (the least
disturbed on a shared machine) and every time measured. The per-image rows of old, cold and
warm must be identical (the script fails otherwise).

    python benchmarks/bench_eval.py [--reps 2] [--max-images N] [--sets Set5,Set14,BSD68] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_COMMIT = "516f983"
DEGRADATIONS = ["clean", "blur", "noise", "jpeg", "blur+noise", "blur+jpeg", "noise+jpeg", "blur+noise+jpeg"]


def worker(mode: str, sets: list[str], max_images: int | None, cache: str | None, out: str) -> None:
    """One measurement in this (fresh) process; writes {"seconds", "rows", "srcore"} to ``out``."""
    import torch

    import srcore
    from srcore.data import load_images
    from srcore.evaluation import evaluate
    from srcore.models import build_model

    if os.environ.get("BENCH_EVAL_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_EVAL_THREADS"]))
    root = os.environ.get("SR_DATA_ROOT", str(ROOT.parent / "shared" / "data"))
    test_sets = {name: load_images(f"{root}/{name}", "test", max_images) for name in sets}
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=32, num_block=4).eval()
    rows = None
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "old":
        rows, _ = evaluate(model, test_sets, DEGRADATIONS, 4, 4, 0, "cpu")
    elif mode in ("cold", "warm"):
        rows, _ = evaluate(model, test_sets, DEGRADATIONS, 4, 4, 0, "cpu", lr_cache=cache)
    elif mode == "net":
        from srcore.evaluation.paper import PaperSuite
        from srcore.evaluation.scoring import default_batch_size

        cases = list(PaperSuite(test_sets, DEGRADATIONS, 4, 0, cache))
        bs = default_batch_size(torch.device("cpu"))
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for start in range(0, len(cases), bs):
                chunk = cases[start:start + bs]
                model(torch.from_numpy(__import__("numpy").stack([c.lr for c in chunk])).permute(0, 3, 1, 2)
                      .float().div_(255))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    Path(out).write_text(json.dumps({"seconds": seconds, "cpu": cpu, "rows": rows, "srcore": srcore.__file__,
                                     "threads": torch.get_num_threads()}))


def run_mode(mode: str, args, code_root: Path, cache: str | None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {**os.environ, "PYTHONPATH": str(code_root),
           "SR_DATA_ROOT": os.environ.get("SR_DATA_ROOT", str(ROOT.parent / "shared" / "data")),
           **({"BENCH_EVAL_THREADS": str(args.threads)} if args.threads else {})}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--sets", args.sets, "--out", out]
    if args.max_images:
        cmd += ["--max-images", str(args.max_images)]
    if cache:
        cmd += ["--cache", cache]
    subprocess.run(cmd, env=env, check=True, cwd=code_root)
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    expected = code_root / "srcore" / "__init__.py"
    if Path(result["srcore"]).resolve() != expected.resolve():
        raise SystemExit(f"{mode}: imported {result['srcore']}, not {expected}")
    return result


def ensure_base(base: Path) -> None:
    if (base / "srcore").is_dir():
        return
    subprocess.run(["git", "worktree", "add", "--detach", str(base), BASE_COMMIT], cwd=ROOT, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--sets", default="Set5,Set14,BSD68")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--base-dir", default="/tmp/wt_eval_base", help=f"a checkout of {BASE_COMMIT} (made if missing)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.sets.split(","), args.max_images, args.cache, args.out)

    base = Path(args.base_dir)
    ensure_base(base)
    times: dict[str, list[float]] = {m: [] for m in ("old", "cold", "warm", "net")}
    cpus: dict[str, list[float]] = {m: [] for m in times}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_eval_cache_") as tmp:
        for rep in range(args.reps):
            cache = f"{tmp}/rep{rep}"  # empty: the cold run fills it, the warm and net runs read it
            for mode in ("old", "cold", "warm", "net"):
                r = run_mode(mode, args, base if mode == "old" else ROOT, None if mode == "old" else cache)
                times[mode].append(r["seconds"])
                cpus[mode].append(r["cpu"])
                if r["rows"] is not None:
                    if mode in rows and rows[mode] != r["rows"]:
                        raise SystemExit(f"{mode}: rows differ between repetitions")
                    rows[mode] = r["rows"]
                print(f"rep {rep + 1}/{args.reps} {mode:>4}: {r['seconds']:7.2f} s wall, {r['cpu']:7.2f} s CPU "
                      f"({r['threads']} torch threads)", flush=True)

    n = len(rows["old"])
    identical = rows["old"] == rows["cold"] == rows["warm"]
    worst = max(abs(a[m] - b[m]) for r in ("cold", "warm") for a, b in zip(rows["old"], rows[r])
                for m in ("psnr", "psnr_y", "ssim_y"))
    print(f"\nOne job's evaluation: SRResNet 32x4 x4 on {args.sets} x 8 degradations = {n} SR images "
          f"(CPU, {os.cpu_count()} cores; fastest of {args.reps}, all runs in brackets; CPU = the process's "
          f"CPU time, all threads)\n")
    print("| evaluation | wall s | vs old | CPU s | vs old | wall beyond the network | vs old "
          "| CPU beyond the network | vs old |")
    print("|:--|--:|--:|--:|--:|--:|--:|--:|--:|")
    best = {m: min(v) for m, v in times.items()}
    cpu = {m: min(v) for m, v in cpus.items()}
    net = best["net"]
    for mode, label in (("old", f"before issue 20 ({BASE_COMMIT})"), ("cold", "now, cold test-LR cache"),
                        ("warm", "now, warm test-LR cache"), ("net", "the network's forward passes alone")):
        extra = best[mode] - net
        cells = [f"{best[mode]:.2f} [{', '.join(f'{t:.1f}' for t in times[mode])}]", f"{best['old'] / best[mode]:.2f}x",
                 f"{cpu[mode]:.2f}", f"{cpu['old'] / cpu[mode]:.2f}x"]
        cpu_extra = cpu[mode] - cpu["net"]
        cells += ["", "", "", ""] if mode == "net" else [
            f"{extra:.2f}", f"{(best['old'] - net) / max(extra, 1e-9):.1f}x",
            f"{cpu_extra:.2f}", f"{(cpu['old'] - cpu['net']) / max(cpu_extra, 1e-9):.1f}x"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nper-image rows old == cold == warm: {identical} ({n} rows x 3 metrics; "
          f"largest difference {worst:.3g})")
    if not identical:
        for r in ("cold", "warm"):
            for a, b in zip(rows["old"], rows[r]):
                if a != b:
                    print(f"  {r}: {a['set']}/{a['image']}/{a['degradation']}: "
                          + ", ".join(f"{m} {b[m] - a[m]:+.3g}" for m in ("psnr", "psnr_y", "ssim_y")))
        raise SystemExit("the metrics differ from the code before issue 20")


if __name__ == "__main__":
    main()
