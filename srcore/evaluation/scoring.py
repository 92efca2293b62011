"""The metrics loop: super-resolve every case of a test suite and score it against its HR.

Metrics follow the paper (PSNR on RGB, crop border = scale) and BasicSR's
conventions (PSNR and SSIM on the BT.601 Y channel).

torch is imported inside the functions that run a model, so that reading the protocol's
constants (``srcore.evaluation.TEST_DEGRADATIONS``, e.g. in the analysis tools) does not load it.
"""
from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from srcore.evaluation.paper import PaperSuite
from srcore.evaluation.suite import EvalCase
from srcore.evaluation.tiling import tiled_forward
from srcore.imageio import write_image
from srcore.metrics import scores

if TYPE_CHECKING:
    import torch

METRICS = ("psnr", "psnr_y", "ssim_y")


class EvaluationStopped(Exception):
    """Evaluation stopped on request between two images; ``rows`` are the images scored so far
    (pass them back as ``done`` to continue where it stopped)."""

    def __init__(self, rows: list[dict], suite: str = "paper"):
        super().__init__(f"evaluation ({suite} suite) stopped on request after {len(rows)} scored images")
        self.rows, self.suite = rows, suite


def super_resolve(model: torch.nn.Module, lr_uint8: np.ndarray, device: torch.device) -> np.ndarray:
    """SR of one uint8 LR image, quantised to uint8 as ``to_uint8`` does."""
    return super_resolve_batch(model, [lr_uint8], device)[0]


def default_batch_size(device: torch.device) -> int:
    """LR images per forward pass when ``batch_size`` is None: on a CPU one (measured on this
    project's 2-core machine with the demo SRResNet on BSD68: 8 same-size images per pass cost
    1.7x the CPU time of 8 single passes, the HR-size activations leave the cache), elsewhere all
    the degradations of one image (a GPU wants batches)."""
    return 1 if device.type == "cpu" else 1 << 30


def super_resolve_batch(model: torch.nn.Module, lrs: list[np.ndarray], device: torch.device,
                        tile: int | None = None, tile_overlap: int = 0) -> list[np.ndarray]:
    """SR of same-size uint8 LR images in one forward pass (tiled with ``tile``), quantised on
    the device: per image the arithmetic of ``to_uint8`` (clamp, x255, round half to even)."""
    import torch

    with torch.inference_mode():
        if len(lrs) == 1:  # a copy (the array may be read-only); a stacked batch's strides pick other conv kernels
            x = torch.tensor(lrs[0]).permute(2, 0, 1)[None]
        else:
            x = torch.from_numpy(np.stack(lrs)).permute(0, 3, 1, 2)
        x = x.to(device).float().div_(255)
        y = model(x) if tile is None else tiled_forward(model, x, tile, tile_overlap)
        y = y.float()
        if not bool(torch.isfinite(y).all()):
            raise ValueError("to_uint8: tensor contains NaN or infinite values")
        q = (y.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a) for a in q]


def _score(case: EvalCase, sr: np.ndarray, crop_border: int, save_dir: Path | None) -> dict:
    if save_dir is not None:
        write_image(Path(save_dir) / case.set / case.degradation / f"{case.image}.png", sr)
    return {"set": case.set, "image": case.image, "degradation": case.degradation, **scores(sr, case.hr, crop_border)}


def evaluate_suite(model: torch.nn.Module, cases: Iterable[EvalCase], crop_border: int,
                   device: torch.device | str = "cpu", save_dir: Path | None = None, done: Iterable[dict] = (),
                   should_stop: Callable[[], bool] = lambda: False,
                   on_progress: Callable[[int, int], None] | None = None, *, batch_size: int | None = None,
                   workers: int = 1, tile: int | None = None, tile_overlap: int = 16) -> tuple[list[dict], dict]:
    """Score ``model`` (put in eval mode) on every case of a suite, in its order.

    Returns per-image rows ``{"set", "image", "degradation", *METRICS}`` and the per
    set x degradation means as a flat dict ``{"<set>/<degradation>/<metric>": value}``. With
    ``save_dir``, each SR image is written to ``<save_dir>/<set>/<degradation>/<image>.png``.
    Rows in ``done`` (an earlier, stopped evaluation's) are kept instead of scored again;
    ``should_stop`` is asked before each new case, and ``EvaluationStopped`` carries the rows
    of every case before the one it stopped at. ``on_progress(done, total)`` is called (in the
    calling thread) as cases are kept or scored; ``total`` is ``len(cases)`` (0 when the suite
    has no length).

    Speed (docs/evaluation-speed.md): consecutive cases of one image with the same LR size
    (the paper's degradations of one image) go through the network ``batch_size`` at a time
    (None: ``default_batch_size``); ``workers`` threads compute the metrics (and write the
    images) while the network runs the next image (0: in line; OpenCV and numpy release the
    GIL); ``tile`` runs the network on ``tile`` x ``tile`` LR tiles with ``tile_overlap``
    pixels of context (``srcore.evaluation.tiling``). The rows are those of one image at a
    time: batching changes the float rounding of the network at most (none measured after the
    8-bit rounding), the threads nothing.
    """
    import torch

    device = torch.device(device)
    batch_size = batch_size or default_batch_size(device)
    model.eval()
    finished = {(r["set"], r["image"], r["degradation"]): r for r in done}
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
    rows = _SuiteRows(len(cases) if hasattr(cases, "__len__") else 0, on_progress, pool, crop_border, save_dir)
    try:
        for _, group in groupby(cases, key=lambda c: (c.set, c.image, c.lr.shape)):
            todo, stop = _cases_to_score(group, finished, rows, should_stop)
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                srs = super_resolve_batch(model, [c.lr for _, c in chunk], device, tile, tile_overlap)
                for (k, case), sr in zip(chunk, srs):
                    rows.score(k, case, sr)
            rows.collect(bound=4 * min(batch_size, 16) + 16)  # bounds the SR images held in memory
            if stop:
                rows.collect(bound=0)
                raise EvaluationStopped(rows.rows)
        rows.collect(bound=0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return rows.rows, summarize(rows.rows)


class _SuiteRows:
    """The rows of a suite in its order, as they are kept or scored: a row scored by a metric
    thread is its future until collected. Every row kept, scored in line or collected counts
    once for ``on_progress(count, total)``, called in the calling thread."""

    def __init__(self, total: int, on_progress: Callable[[int, int], None] | None, pool: ThreadPoolExecutor | None,
                 crop_border: int, save_dir: Path | None):
        self.rows: list = []          # dicts, or futures of the metric threads
        self.pending: deque = deque()  # positions in rows of futures not yet collected
        self.count, self.total, self.on_progress = 0, total, on_progress
        self.pool, self.crop_border, self.save_dir = pool, crop_border, save_dir

    def _progress(self) -> None:
        self.count += 1
        if self.on_progress is not None:
            self.on_progress(self.count, self.total)

    def keep(self, row: dict) -> None:
        """An earlier evaluation's row, kept in place."""
        self.rows.append(row)
        self._progress()

    def reserve(self) -> int:
        """The position of a case's row, scored later."""
        self.rows.append(None)
        return len(self.rows) - 1

    def score(self, k: int, case: EvalCase, sr: np.ndarray) -> None:
        if self.pool is None:
            self.rows[k] = _score(case, sr, self.crop_border, self.save_dir)
            self._progress()
        else:
            self.rows[k] = self.pool.submit(_score, case, sr, self.crop_border, self.save_dir)
            self.pending.append(k)

    def collect(self, bound: int) -> None:
        """Wait for the oldest futures until at most ``bound`` are pending (and take any finished)."""
        while self.pending and (len(self.pending) > bound or self.rows[self.pending[0]].done()):
            k = self.pending.popleft()
            self.rows[k] = self.rows[k].result()
            self._progress()


def _cases_to_score(group: Iterable[EvalCase], finished: dict, rows: _SuiteRows,
                    should_stop: Callable[[], bool]) -> tuple[list[tuple[int, EvalCase]], bool]:
    """The cases of one group (one image, one LR size) to score, each with its row's position,
    and whether a stop was asked (before the first case not scored yet; the cases after it are
    left out). Cases an earlier evaluation scored are kept in place instead."""
    todo = []
    for case in group:
        earlier = finished.get((case.set, case.image, case.degradation))
        if earlier is not None:
            rows.keep(earlier)
            continue
        if should_stop():
            return todo, True
        todo.append((rows.reserve(), case))
    return todo, False


def evaluate(model: torch.nn.Module, test_sets: dict[str, list[tuple[str, np.ndarray]]],
             degradations: list[str], scale: int, crop_border: int, base_seed: int = 0,
             device: torch.device | str = "cpu", save_dir: Path | None = None, done: Iterable[dict] = (),
             should_stop: Callable[[], bool] = lambda: False,
             on_progress: Callable[[int, int], None] | None = None, *, lr_cache=None, batch_size: int | None = None,
             workers: int = 1, tile: int | None = None, tile_overlap: int = 16) -> tuple[list[dict], dict]:
    """Evaluate ``model`` (put in eval mode) on every set x degradation of the paper's protocol
    (``PaperSuite``, its LR images from the disk cache ``lr_cache`` when given: a folder or an
    ``LRCache``); returns what ``evaluate_suite`` does. ``on_progress(done, total)`` is called
    as images x degradations are done (kept from ``done`` or scored)."""
    return evaluate_suite(model, PaperSuite(test_sets, degradations, scale, base_seed, lr_cache), crop_border, device,
                          save_dir, done, should_stop, on_progress, batch_size=batch_size, workers=workers, tile=tile,
                          tile_overlap=tile_overlap)


def summarize(rows: list[dict]) -> dict:
    """Per set x degradation means of every metric."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["set"], r["degradation"])].append(r)
    return {f"{s}/{d}/{m}": float(np.mean([r[m] for r in rs])) for (s, d), rs in groups.items() for m in METRICS}
