"""`python -m sweeper.preview [overrides...] [--n 8] [--out grid.png]`: look at the training data.

Draws one batch exactly as a job with the same overrides would (same data, crops and
degradation), and writes a PNG grid: each row an HR target next to its LR input
(enlarged with nearest-neighbour so the degradation's pixels stay visible).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from srcore.imageio import write_image
from sweeper import build
from sweeper.compose import compose
from sweeper.preflight import validate_config


def preview_grid(hr: torch.Tensor, lr: torch.Tensor, gap: int = 4) -> np.ndarray:
    """Rows of [HR | LR enlarged to the HR size], white gaps between them."""
    n, _, h, w = hr.shape
    up = torch.nn.functional.interpolate(lr, size=(h, w), mode="nearest")
    grid = torch.ones(3, n * (h + gap) - gap, 2 * w + gap)
    for i in range(n):
        top = i * (h + gap)
        grid[:, top:top + h, :w] = hr[i]
        grid[:, top:top + h, w + gap:] = up[i]
    return (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="config overrides, as for python -m sweeper")
    ap.add_argument("--n", type=int, default=8, help="number of pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default: outputs/preview/<degradation>.png)")
    args = ap.parse_args(argv)

    cfg = compose(args.overrides)
    validate_config(cfg)
    degrade = build.degradation(cfg)
    patches = build.train_patches(cfg, degrade, seed=args.seed)
    hr = torch.stack([patches[k] for k in range(args.n)]).float() / 255
    target, lr = degrade(hr, torch.Generator().manual_seed(args.seed))

    out = args.out or Path(cfg.paths.output_root) / "preview" / f"{cfg.degradation.name}.png"
    write_image(out, preview_grid(target, lr))
    print(f"wrote {out}: {args.n} pairs, HR {tuple(target.shape[-2:])} | LR {tuple(lr.shape[-2:])} "
          f"(degradation={cfg.degradation.name})")
    return out


if __name__ == "__main__":
    main()
