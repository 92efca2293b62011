"""The new regularisers train on CUDA through srcore.train (no Hydra): Adaptive Dropout +
Simple Align (two views, shared crops) and DropPath, SRResNet 32x4, the paper's Real-ESRGAN
pipeline on the device, 20 iterations, then a resume from the checkpoint at 10 must end on
the same weights as the uninterrupted run (printed: max |difference|, expected 0 on one GPU
only if the kernels are deterministic; the CPU test asserts bit-identity)."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from srcore.data import TrainPatches, builtin_images  # noqa: E402
from srcore.degrade import build_degradation  # noqa: E402
from srcore.models import build_model  # noqa: E402
from srcore.train import Interrupted, TrainSettings, train  # noqa: E402


def regularizer(name: str) -> dict:
    return {"name": name, **yaml.safe_load((ROOT / "conf" / "regularizer" / f"{name}.yaml").read_text())}


def run(regs, patches, deg, ckpt: Path, stop_at: int | None = None, device: str = "cuda"):
    torch.manual_seed(0)
    model = build_model("srresnet", 4, regs, num_feat=32, num_block=4)
    s = TrainSettings(iterations=20, batch_size=8, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0, periods=(20,),
                      restart_weights=(1.0,), eta_min=1e-7, ema_decay=0.999, seed=0, log_every=10, val_every=100,
                      ckpt_every=10, num_workers=0, device=device,
                      precision="fp32", tf32=False, channels_last=False, compile=False, cuda_graph=False,
                      superbatch=1, prefetch=0)
    logs = []
    try:
        train(model, patches, deg, s, ckpt, log_metrics=lambda d, i: logs.append(d),
              should_stop=lambda: stop_at is not None and len(logs) * 10 >= stop_at)
    except Interrupted:
        return None, logs
    return model, logs


def main(device: str = "cuda") -> None:
    params = yaml.safe_load((ROOT / "conf" / "degradation" / "realesrgan.yaml").read_text())
    params.pop("name"), params.pop("gt_size")
    deg = build_degradation("realesrgan", 4, 128, **params)
    patches = TrainPatches(deg.prepare_images(builtin_images("train")), 200, 0, True)
    ad = dict(regularizer("adaptive_dropout"), step=2)  # every site switches within the 20 iterations
    for regs in ([ad, regularizer("simple_align")], [regularizer("droppath")]):
        names = "+".join(r["name"] for r in regs)
        with tempfile.TemporaryDirectory() as tmp:
            full, logs = run(regs, patches, deg, Path(tmp) / "a.pt", device=device)
            run(regs, patches, deg, Path(tmp) / "b.pt", stop_at=10, device=device)
            resumed, _ = run(regs, patches, deg, Path(tmp) / "b.pt", device=device)
        diff = max((a - b).abs().max().item() for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
        print(f"{names}: {logs[-1]}; resume max |diff| {diff:.3g}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:2])
