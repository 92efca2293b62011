"""Training speed of every backbone at the paper's batch: `python benchmarks/bench_backbones.py`.

For each `conf/backbone/*.yaml` (the published x4 sizes; `--small` for the preset=smoke sizes of
`conf/preset_backbone/`): parameters, then iterations per second of the model step alone
(forward + L1 + backward + Adam) at batch 16, LR patch 32, with last-conv channel dropout, in
each precision asked for (fp32; bf16 autocast). Needs srcore only (no Hydra): it runs on a GPU
machine that has just PyTorch, NumPy and PyYAML. Prints one table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from srcore.models import build_model  # noqa: E402
from srcore.tf32 import cuda_tf32  # noqa: E402

CONF = ROOT / "conf"


def backbone_config(name: str) -> dict:
    """conf/backbone/<name>.yaml with its `defaults` (a variant's base) merged in."""
    raw = yaml.safe_load((CONF / "backbone" / f"{name}.yaml").read_text())
    base = {}
    for entry in raw.pop("defaults", []):
        if entry != "_self_":
            base.update(backbone_config(entry))
    return {**base, **raw}


def model_args(name: str, small: bool) -> dict:
    args = backbone_config(name)
    if small:
        args.update(yaml.safe_load((CONF / "preset_backbone" / f"smoke_{name}.yaml").read_text()))
    p = args.pop("dropout_p", 0.5)
    return {**args, "upscale": 4,
            "regularizers": [{"name": "dropout", "position": "last", "p": p, "kind": "channel"}]}


def train_its(model, device, batch: int, patch: int, precision: str, steps: int, warmup: int) -> float:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99))
    lr = torch.rand(batch, 3, patch, patch, device=device)
    hr = torch.rand(batch, 3, patch * 4, patch * 4, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.l1_loss(model(lr).float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbones", default="srresnet,rrdb,edsr,edsr_l,swinir,swinir_s,swinir_real,hat,hat_s")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="the preset=smoke sizes (CPU)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    precisions = args.precisions.split(",")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; batch {args.batch}, LR patch {args.patch}, {args.steps} timed steps after "
          f"{args.warmup}; torch {torch.__version__}{' (preset=smoke sizes)' if args.small else ''}")
    print("| backbone | parameters | " + " | ".join(f"train it/s ({p})" for p in precisions) + " |")
    print("|---|---|" + "---|" * len(precisions))
    for backbone in args.backbones.split(","):
        torch.manual_seed(0)
        model = build_model(**model_args(backbone, args.small)).to(device)
        n = sum(p.numel() for p in model.parameters())
        with cuda_tf32(device, False):  # fp32 means fp32
            its = [train_its(model, device, args.batch, args.patch, p, args.steps, args.warmup) for p in precisions]
        print(f"| {backbone} | {n:,} | " + " | ".join(f"{v:.2f}" for v in its) + " |", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
