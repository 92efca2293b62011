"""The metrics loop: super-resolve every case of a test suite and score it against its HR.

Metrics follow the paper (PSNR on RGB, crop border = scale) and BasicSR's
conventions (PSNR and SSIM on the BT.601 Y channel).

torch is imported inside the functions that run a model, so that reading the protocol's
constants (``srcore.evaluation.TEST_DEGRADATIONS``, e.g. in the analysis tools) does not load it.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from srcore.evaluation.paper import PaperSuite
from srcore.evaluation.suite import EvalCase
from srcore.imageio import write_image
from srcore.metrics import psnr, ssim, to_uint8

if TYPE_CHECKING:
    import torch

METRICS = ("psnr", "psnr_y", "ssim_y")


class EvaluationStopped(Exception):
    """Evaluation stopped on request between two images; ``rows`` are the images scored so far
    (pass them back as ``done`` to continue where it stopped)."""

    def __init__(self, rows: list[dict]):
        super().__init__(f"evaluation stopped on request after {len(rows)} scored images")
        self.rows = rows


def super_resolve(model: torch.nn.Module, lr_uint8: np.ndarray, device: torch.device) -> np.ndarray:
    import torch

    with torch.inference_mode():
        x = torch.tensor(lr_uint8).permute(2, 0, 1)[None]  # a copy: the array may be read-only
        x = x.to(device).float().div_(255)
        return to_uint8(model(x)[0].float().cpu())


def evaluate_suite(model: torch.nn.Module, cases: Iterable[EvalCase], crop_border: int,
                   device: torch.device | str = "cpu", save_dir: Path | None = None, done: Iterable[dict] = (),
                   should_stop: Callable[[], bool] = lambda: False,
                   on_progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], dict]:
    """Score ``model`` (put in eval mode) on every case of a suite, in its order.

    Returns per-image rows ``{"set", "image", "degradation", *METRICS}`` and the per
    set x degradation means as a flat dict ``{"<set>/<degradation>/<metric>": value}``. With
    ``save_dir``, each SR image is written to ``<save_dir>/<set>/<degradation>/<image>.png``.
    Rows in ``done`` (an earlier, stopped evaluation's) are kept instead of scored again;
    ``should_stop`` is asked before each new image, and ``EvaluationStopped`` carries the rows
    so far when it says so. ``on_progress(done, total)`` is called after every case (kept or
    scored); ``total`` is ``len(cases)`` (0 when the suite has no length).
    """
    import torch

    device = torch.device(device)
    model.eval()
    finished = {(r["set"], r["image"], r["degradation"]): r for r in done}
    total = len(cases) if hasattr(cases, "__len__") else 0
    rows = []
    for case in cases:
        earlier = finished.get((case.set, case.image, case.degradation))
        if earlier is not None:
            rows.append(earlier)
            if on_progress is not None:
                on_progress(len(rows), total)
            continue
        if should_stop():
            raise EvaluationStopped(rows)
        sr = super_resolve(model, case.lr, device)
        rows.append({
            "set": case.set, "image": case.image, "degradation": case.degradation,
            "psnr": psnr(sr, case.hr, crop_border),
            "psnr_y": psnr(sr, case.hr, crop_border, test_y=True),
            "ssim_y": ssim(sr, case.hr, crop_border, test_y=True),
        })
        if save_dir is not None:
            write_image(Path(save_dir) / case.set / case.degradation / f"{case.image}.png", sr)
        if on_progress is not None:
            on_progress(len(rows), total)
    return rows, summarize(rows)


def evaluate(model: torch.nn.Module, test_sets: dict[str, list[tuple[str, np.ndarray]]],
             degradations: list[str], scale: int, crop_border: int, base_seed: int = 0,
             device: torch.device | str = "cpu", save_dir: Path | None = None, done: Iterable[dict] = (),
             should_stop: Callable[[], bool] = lambda: False,
             on_progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], dict]:
    """Evaluate ``model`` (put in eval mode) on every set x degradation of the paper's protocol
    (``PaperSuite``); returns what ``evaluate_suite`` does. ``on_progress(done, total)`` is
    called as images x degradations are done (kept from ``done`` or scored)."""
    return evaluate_suite(model, PaperSuite(test_sets, degradations, scale, base_seed), crop_border, device, save_dir,
                          done, should_stop, on_progress)


def summarize(rows: list[dict]) -> dict:
    """Per set x degradation means of every metric."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["set"], r["degradation"])].append(r)
    return {f"{s}/{d}/{m}": float(np.mean([r[m] for r in rs])) for (s, d), rs in groups.items() for m in METRICS}
