"""Checks of the GPU engine that need a GPU (benchmarks/gpu_check.sh runs them; issue 25):

1. ``equivalence``: SRResNet with channel dropout, bf16 + channels_last, 50 iterations on the
   same pre-made batches, eager vs the CUDA-graphed step (``train.cuda_graph``): each
   iteration's loss (relative gap; bf16's tolerance, 2e-2, is the bar) and the final weights;
   then a second graphed run with the same seed: its weights equal the first's or not (cuDNN's
   backward kernels may add in any order; ``--deterministic`` asks for deterministic ones);
2. ``official``: every fixture of tests/fixtures/official (the official architectures' outputs)
   reproduced by the project's network on the GPU in fp32 (TF32 off), eager and replayed from a
   CUDA graph of the forward pass: the largest gap per backbone;
3. ``profile``: ``torch.profiler`` over 10 eager iterations of the training loop (a fixed
   batch) and of the bare step (forward, L1, backward, fused Adam, EMA): CPU time, CUDA time
   and the operations the loop adds, by self CPU time -- where an eager iteration's time goes.

    python benchmarks/gpu_engine.py [--checks equivalence,official,profile] [--json out.json]
    python benchmarks/gpu_engine.py --cpu-smoke     # the plumbing at tiny sizes on the CPU
On the CPU the graphed runs fall back to eager (no CUDA graphs there) and say so.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from srcore.data import TrainPatches, builtin_images  # noqa: E402
from srcore.degrade import Bicubic  # noqa: E402
from srcore.models import build_model  # noqa: E402
from srcore.train import TrainSettings, train  # noqa: E402


class Replay:
    """A 'degradation' that hands out pre-made (hr, lr) batches in order: every run sees the same."""

    def __init__(self, batches):
        self.batches, self.next = batches, 0

    def __call__(self, hr, g, crop=None):
        pair = self.batches[self.next % len(self.batches)]
        self.next += 1
        return pair


def _settings(device, iterations, **kw) -> TrainSettings:
    base = dict(iterations=iterations, batch_size=16, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0,
                periods=(iterations,), restart_weights=(1,), eta_min=1e-7, ema_decay=0.999, seed=0, log_every=1,
                val_every=10**9, ckpt_every=10**9, num_workers=0, device=device, precision="bf16", tf32=False,
                channels_last=True, compile=False, cuda_graph=False, superbatch=1, prefetch=0)
    return TrainSettings(**{**base, **kw})


def equivalence(device: str, small: bool, steps: int = 50) -> dict:
    feat, blocks, patch, batch = (8, 2, 8, 4) if small else (64, 16, 32, 16)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    photos = TrainPatches(builtin_images("train"), patch=patch * 4, seed=0)
    batches = []
    for i in range(steps):
        hr = photos.batch(range(i * batch, (i + 1) * batch)).float().div_(255)
        batches.append(tuple(t.to(dev) for t in Bicubic(4)(hr, g)))

    def run(graph: bool):
        torch.manual_seed(0)
        model = build_model("srresnet", num_feat=feat, num_block=blocks,
                            regularizers=[{"name": "dropout", "position": "last", "p": 0.7, "kind": "channel"}])
        losses = []
        with tempfile.TemporaryDirectory() as tmp:
            train(model, photos, Replay(batches), _settings(device, steps, batch_size=batch, cuda_graph=graph),
                  Path(tmp) / "c.pt", log_metrics=lambda m, step: losses.append(m["train/loss"]) if "train/loss" in m
                  else None)
        return losses, {k: v.float().cpu() for k, v in model.state_dict().items()}

    eager_losses, eager_w = run(False)
    graph_losses, graph_w = run(True)
    again_losses, again_w = run(True)
    rel = [abs(a - b) / abs(a) for a, b in zip(eager_losses, graph_losses)]
    w_rel = max(((eager_w[k] - graph_w[k]).norm() / eager_w[k].norm().clamp_min(1e-12)).item() for k in eager_w)
    return {"check": "equivalence", "steps": steps, "max_rel_loss_gap": max(rel), "last_rel_loss_gap": rel[-1],
            "weights_rel_gap": w_rel, "loss_within_bf16_tolerance": max(rel) <= 2e-2,
            "graph_runs_equal": all(torch.equal(graph_w[k], again_w[k]) for k in graph_w),
            "graph_runs_max_abs_gap": max((graph_w[k] - again_w[k]).abs().max().item() for k in graph_w),
            "graph_runs_same_losses": graph_losses == again_losses}


def official(device: str) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_official_outputs import official_cases

    from srcore.tf32 import cuda_tf32

    dev = torch.device(device)
    worst: dict[str, dict] = {}
    with cuda_tf32(dev, False), torch.no_grad():
        for case, model, x, expected, tol in official_cases(device):
            eager = (model(x.clone()) - expected).abs().max().item()
            graphed = None
            if dev.type == "cuda":
                static = x.clone()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    model(static)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = model(static)
                static.copy_(x)
                graph.replay()
                graphed = (out - expected).abs().max().item()
            backbone = case.split("_x")[0]
            w = worst.setdefault(backbone, {"cases": 0, "eager": 0.0, "graph": None, "cpu_tolerance": tol})
            w["cases"] += 1
            w["eager"] = max(w["eager"], eager)
            if graphed is not None:
                w["graph"] = max(w["graph"] or 0.0, graphed)
    return {"check": "official", "device": device, "per_backbone": worst}


def profile(device: str, small: bool, iters: int = 10) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    feat, blocks, patch, batch = (8, 2, 8, 4) if small else (64, 16, 32, 16)
    dev = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    hr = torch.rand(batch, 3, patch * 4, patch * 4, device=dev)
    lr = torch.rand(batch, 3, patch, patch, device=dev)
    tables = {}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # the bare step
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=feat, num_block=blocks).to(dev)
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=2e-4, betas=(0.9, 0.99), **({"fused": True} if dev.type == "cuda" else {}))

    def bare():
        loss = F.l1_loss(model(lr), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 0.001)

    for _ in range(3):
        bare()
    sync()
    with torch_profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(iters):
            bare()
        sync()
        bare_s = time.perf_counter() - t0
    tables["bare"] = prof.key_averages()

    # the training loop (eager, fp32 NCHW, a fixed batch)
    class Fixed:
        def __call__(self, hr_in, g, crop=None):
            return hr, lr

    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=feat, num_block=blocks)
    patches = TrainPatches(builtin_images("train")[:2], patch=patch * 4, seed=0)
    total, state = 3 + iters + 1, {}
    prof = torch_profile(activities=activities)

    def on_iteration(it):
        if it == 3:
            sync()
            prof.__enter__()
            state["t0"] = time.perf_counter()
        if it == 3 + iters:
            sync()
            state["s"] = time.perf_counter() - state["t0"]
            prof.__exit__(None, None, None)

    with tempfile.TemporaryDirectory() as tmp:
        train(model, patches, Fixed(), _settings(device, total, batch_size=batch, precision="fp32",
                                                channels_last=False, log_every=total), Path(tmp) / "c.pt",
              on_iteration=on_iteration)
    tables["loop"] = prof.key_averages()

    def self_cpu(table):
        return {e.key: e.self_cpu_time_total for e in table}

    bare_ops, loop_ops = self_cpu(tables["bare"]), self_cpu(tables["loop"])
    extra = sorted(((k, (v - bare_ops.get(k, 0)) / iters) for k, v in loop_ops.items()), key=lambda kv: -kv[1])
    return {"check": "profile", "iters": iters, "bare_ms_per_it": 1e3 * bare_s / iters,
            "loop_ms_per_it": 1e3 * state["s"] / iters,
            "loop_extra_self_cpu_us_per_it": [(k, round(v, 1)) for k, v in extra[:12] if v > 0]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", default="equivalence,official,profile")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--deterministic", action="store_true", help="cudnn.deterministic for the equivalence runs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    device = "cpu" if args.cpu_smoke else args.device
    if args.deterministic:
        torch.backends.cudnn.deterministic = True
    rows = []
    for check in args.checks.split(","):
        t0 = time.perf_counter()
        try:
            row = {"equivalence": lambda: equivalence(device, args.cpu_smoke, 5 if args.cpu_smoke else 50),
                   "official": lambda: official(device),
                   "profile": lambda: profile(device, args.cpu_smoke, 3 if args.cpu_smoke else 10)}[check]()
        except Exception as e:  # noqa: BLE001 - one failing check must not hide the others
            row = {"check": check, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
