"""What the training loop does beyond the model step, counted on the CPU (issue 25: on an H200
the project's eager step took 20.8 ms where forward + L1 + backward + fused Adam + EMA took 11.6).

Three loops over the same fixed batch, each in its own process, the network SRResNet with the
paper's 16 blocks but 4 features and LR crops of 8 px (so compute is small and the host's work shows):
- ``bare``: forward, L1, backward, Adam, EMA (``_foreach_lerp_``) -- the floor;
- ``loop``: ``srcore.train.train`` of this checkout, eager, a fixed pre-degraded batch;
- ``packed``: the same with the training images packed in one buffer and each batch's crops
  gathered at once (``TrainPatches.to``: what a GPU job does with resident images);
- ``base``: the same with the loop of another checkout (``--base``, default commit 04dd967, the
  loop before issue 25), extracted with ``git archive``.
For each: aten operations dispatched per iteration (every one is a kernel launch, or more, on a
GPU), host reads per iteration (``item``/``bool``: each a wait for a GPU; the CPU's Adam reads its
step counters, which are on the device and not read with the fused Adam a GPU job uses), and host microseconds
per iteration (one thread; best of ``--rounds``). Then the operations the loop adds to the bare
step, by name.

    python benchmarks/loop_overhead.py [--iters 40] [--rounds 3] [--base /tmp/wt_04dd967]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_COMMIT = "04dd967"
BATCH, PATCH = 16, 8  # LR 8, HR 32: little compute, so the host's work shows in the time


def _counting_mode():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()
            self.active = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self.active:
                self.ops[str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

    return Count()


def worker(kind: str, iters: int) -> dict:
    """Ops and reads counted over ``iters`` iterations, then the same loop timed without counting."""
    counted = _loop(kind, iters, count=True)
    timed = _loop(kind, iters, count=False)
    return {**counted, "us_per_it": timed["us_per_it"]}


def _loop(kind: str, iters: int, count: bool) -> dict:
    import contextlib

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    from srcore.data import TrainPatches, builtin_images
    from srcore.models import build_model
    from srcore.train import TrainSettings, train

    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=4, num_block=16)
    hr = torch.rand(BATCH, 3, PATCH * 4, PATCH * 4)
    lr = torch.rand(BATCH, 3, PATCH, PATCH)
    counter = _counting_mode()
    mode = counter if count else contextlib.nullcontext()
    stamps = {}
    first, last = 5, 5 + iters

    def mark(it):
        counter.active = first <= it < last
        if it in (first, last):
            stamps[it] = time.perf_counter()

    if kind == "bare":
        ema = [p.detach().clone() for p in model.parameters()]
        params = list(model.parameters())
        opt = torch.optim.Adam(params, lr=2e-4, betas=(0.9, 0.99))
        with mode:
            for it in range(1, last + 1):
                loss = F.l1_loss(model(lr), hr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    torch._foreach_lerp_(ema, params, 0.001)
                mark(it)
    else:
        class FixedBatch:
            def __call__(self, hr_in, g, crop=None):
                return hr, lr

        patches = TrainPatches(builtin_images("train")[:2], patch=PATCH * 4, seed=0)
        if kind == "packed":  # the images in one buffer, crops gathered: what a GPU job does
            patches.to("cpu")
        total = last + 1  # the last log and checkpoint fall outside the counted iterations
        settings = dict(iterations=total, batch_size=BATCH, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0,
                        periods=(total,), restart_weights=(1,), eta_min=1e-7, ema_decay=0.999, seed=0,
                        log_every=total, val_every=total, ckpt_every=total, num_workers=0, device="cpu",
                        precision="fp32", tf32=False, channels_last=False, compile=False)
        fields = set(TrainSettings.__dataclass_fields__)
        settings.update({k: v for k, v in dict(cuda_graph=True, superbatch=1, prefetch=0).items() if k in fields})
        with mode, tempfile.TemporaryDirectory() as tmp:
            train(model, patches, FixedBatch(), TrainSettings(**settings), Path(tmp) / "c.pt", on_iteration=mark)
    reads = counter.ops.get("_local_scalar_dense", 0)
    return {"kind": kind, "us_per_it": 1e6 * (stamps[last] - stamps[first]) / iters,
            "ops_per_it": sum(counter.ops.values()) / iters, "reads_per_it": reads / iters,
            "ops": {k: v / iters for k, v in counter.ops.items()}}


def _ensure_base(base: Path) -> bool:
    if (base / "srcore" / "train.py").exists():
        return True
    try:
        base.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASE_COMMIT], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True, capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"no base checkout at {base} ({e}); skipped", file=sys.stderr)
        return False


def run(kind: str, iters: int, base: Path) -> dict:
    tree = base if kind == "base" else ROOT
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "loop" if kind == "base" else kind,
                           "--iters", str(iters)], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["kind"] = kind
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", type=Path, default=Path(f"/tmp/wt_{BASE_COMMIT}"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.iters)))
        return
    kinds = ["bare", "loop", "packed"] + (["base"] if _ensure_base(args.base) else [])
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            res = run(kind, args.iters, args.base)
            if kind not in best or res["us_per_it"] < best[kind]["us_per_it"]:
                best[kind] = res
    print(f"SRResNet 4x16 (the paper's depth, little compute), batch {BATCH}, LR {PATCH}, one fixed batch, CPU, "
          f"1 thread, {args.iters} iterations, best of {args.rounds}")
    print("| loop | aten ops / it | host reads / it | host µs / it | µs over bare |\n|---|---:|---:|---:|---:|")
    for kind in kinds:
        b = best[kind]
        print(f"| {kind} | {b['ops_per_it']:.1f} | {b['reads_per_it']:.2f} | {b['us_per_it']:.0f} | "
              f"{b['us_per_it'] - best['bare']['us_per_it']:+.0f} |")
    for kind in kinds[1:]:
        extra = {k: v - best["bare"]["ops"].get(k, 0) for k, v in best[kind]["ops"].items()}
        extra = {k: v for k, v in sorted(extra.items(), key=lambda kv: -abs(kv[1])) if abs(v) > 1e-9}
        print(f"\nops per iteration in `{kind}` beyond the bare step: "
              + (", ".join(f"{k} {v:+.2f}" for k, v in list(extra.items())[:15]) or "none"))


if __name__ == "__main__":
    main()
