"""The paper's test protocol: every test set under every fixed test degradation.

Metrics follow the paper (PSNR on RGB, crop border = scale) and BasicSR's
conventions (PSNR and SSIM on the BT.601 Y channel).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from srcore.eval_degradations import make_test_lr, mod_crop, noise_seed
from srcore.imageio import write_image
from srcore.metrics import psnr, ssim, to_uint8

METRICS = ("psnr", "psnr_y", "ssim_y")


@torch.inference_mode()
def super_resolve(model: torch.nn.Module, lr_uint8: np.ndarray, device: torch.device) -> np.ndarray:
    x = torch.tensor(lr_uint8).permute(2, 0, 1)[None]  # a copy: the array may be read-only
    x = x.to(device).float().div_(255)
    return to_uint8(model(x)[0].float().cpu())


def evaluate(model: torch.nn.Module, test_sets: dict[str, list[tuple[str, np.ndarray]]],
             degradations: list[str], scale: int, crop_border: int, base_seed: int = 0,
             device: torch.device | str = "cpu", save_dir: Path | None = None) -> tuple[list[dict], dict]:
    """Evaluate ``model`` (put in eval mode) on every set x degradation.

    Returns per-image rows and the per-set means as a flat dict
    ``{"<set>/<degradation>/<metric>": value}``.
    """
    device = torch.device(device)
    model.eval()
    rows = []
    for set_name, images in test_sets.items():
        for image_name, hr in images:
            hr = mod_crop(hr, scale)
            for deg in degradations:
                lr = make_test_lr(hr, deg, scale, seed=noise_seed(set_name, image_name, deg, base_seed))
                sr = super_resolve(model, lr, device)
                rows.append({
                    "set": set_name, "image": image_name, "degradation": deg,
                    "psnr": psnr(sr, hr, crop_border),
                    "psnr_y": psnr(sr, hr, crop_border, test_y=True),
                    "ssim_y": ssim(sr, hr, crop_border, test_y=True),
                })
                if save_dir is not None:
                    write_image(Path(save_dir) / set_name / deg / f"{image_name}.png", sr)
    return rows, summarize(rows)


def summarize(rows: list[dict]) -> dict:
    """Per set x degradation means of every metric."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["set"], r["degradation"])].append(r)
    return {f"{s}/{d}/{m}": float(np.mean([r[m] for r in rs])) for (s, d), rs in groups.items() for m in METRICS}
