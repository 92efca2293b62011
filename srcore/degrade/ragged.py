"""Ragged super-batches: batches of different image sizes run as one padded tensor.

After the Real-ESRGAN pipeline's first random resize, the batches of a super-batch
(``RealESRGANDegradation.many``) have different sizes. ``Layout`` describes a group of them
stacked along the batch dimension of one tensor, each sample top-left aligned in a
``H`` x ``W`` frame (the group's largest size), with **replicate padding** beyond its own
size (``place``). On such a tensor

* pointwise ops give, inside each sample's own size, exactly what they give on the sample alone,
  and keep the padding a replicate padding;
* the count of distinct 8-bit levels per sample (Poisson noise) is unchanged: the padding only
  repeats values that are there;
* the JPEG codec's own edge expansion (replicating the last row / column up to a multiple of
  16) is what the padding already holds, and 8x8 blocks are independent; only its chroma
  upsampling must see the chroma plane's true edge: ``replicate_take`` rebuilds it;
* a filter with reflect-101 borders sees each sample's own borders after ``reflect_take``.

The noise realisations are drawn per batch from that batch's own generator, on its own size,
exactly as one batch at a time (``UnitDraws``), then placed. ``plan_groups`` decides which
batches share a padded tensor: fewer groups mean fewer launches, larger ones more padded
pixels. Every index is built on the host from sizes the host knows, so nothing reads the device.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


class Run(NamedTuple):
    """``count`` consecutive samples of one size ``h`` x ``w`` (a batch, or several of a size)."""

    count: int
    h: int
    w: int


def small_codec_gemm(h: int, w: int) -> bool:
    """Whether the JPEG codec's block transform of an h x w image alone is a GEMM whose rows a
    BLAS may compute with another kernel than in a larger matrix: the chroma planes' matrix has
    2 ceil(h / 16) ceil(w / 16) rows, and CPU GEMMs (MKL here) treat the last rows of a matrix of
    fewer than 12 rows that are not a multiple of 4 apart (the luma matrix's are always a
    multiple of 4). Such an image (at most 16 x 80 px) only shares a padded group with images of
    its own size, so its codec sees the same matrix shapes as alone."""
    blocks = -(-h // 16) * -(-w // 16)
    return blocks in (1, 3, 5)


def plan_groups(runs: Sequence[Run], group_px: float) -> list[tuple[int, int]]:
    """Split ``runs`` (in the order given; callers sort them by size, largest first) into
    contiguous groups, each padded to its largest height and width, minimising
    ``sum(group_px + padded pixels)`` over the groups: ``group_px`` is what one more group's
    launches are worth in pixels (0: groups only of runs whose padding costs nothing). Ties go to
    fewer groups. A run of a ``small_codec_gemm`` size joins only runs of its size. Returns
    [start, stop) index pairs into ``runs``."""
    n = len(runs)
    best: list[tuple[float, float]] = [(0.0, 0)] + [(float("inf"), float("inf"))] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        mh = mw = cnt = 0
        small = False
        for i in range(j - 1, -1, -1):
            c, h, w = runs[i]
            small = small or small_codec_gemm(h, w)
            if small and (h, w) != (runs[j - 1].h, runs[j - 1].w):
                break  # a small one among other sizes (and so for every longer group)
            mh, mw, cnt = max(mh, h), max(mw, w), cnt + c
            cost = (best[i][0] + group_px + cnt * mh * mw, best[i][1] + 1)
            if cost <= best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append((cut[j], j))
        j = cut[j]
    return groups[::-1]


class Layout:
    """Runs of samples stacked in one (N, C, H, W) tensor, each top-left aligned in the frame of
    the largest; see the module doc."""

    def __init__(self, runs: Sequence[Run]):
        self.runs = [Run(*r) for r in runs]
        self.n = sum(r.count for r in self.runs)
        self.h = max(r.h for r in self.runs)
        self.w = max(r.w for r in self.runs)

    @property
    def uniform(self) -> bool:
        """Whether every sample fills the frame (no padding anywhere)."""
        return all(r.h == self.h and r.w == self.w for r in self.runs)

    def starts(self) -> list[int]:
        return list(np.cumsum([0] + [r.count for r in self.runs[:-1]]))

    def place(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        """The tensor of the layout from one (count, C, h, w) piece per run (or pieces that
        together hold the runs in order): each replicate-padded to the frame, concatenated."""
        out = [p if p.shape[-2:] == (self.h, self.w) else
               F.pad(p, (0, self.w - p.shape[-1], 0, self.h - p.shape[-2]), mode="replicate") for p in pieces]
        return out[0] if len(out) == 1 else torch.cat(out)

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each run's samples at their own size (views of ``x``)."""
        return [x[s:s + r.count, :, :r.h, :r.w] for s, r in zip(self.starts(), self.runs)]

    def _index(self, per_run, length: int, device: torch.device) -> torch.Tensor:
        """(N, length) int64 index on ``device``: row i of the run's samples is per_run(run, length)."""
        rows = np.concatenate([np.broadcast_to(per_run(r, length), (r.count, length)) for r in self.runs])
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(device, non_blocking=True)

    def take(self, x: torch.Tensor, rows, cols, out_h: int, out_w: int) -> torch.Tensor:
        """(N, C, out_h, out_w): sample i's pixel (r, c) is x[i, :, rows(run)[r], cols(run)[c]],
        one gather (index built on the host, copied without waiting)."""
        n, c = x.shape[:2]
        bi = _arange(n, x.device).view(n, 1, 1, 1)
        ci = _arange(c, x.device).view(1, c, 1, 1)
        ri = self._index(rows, out_h, x.device).view(n, 1, out_h, 1)
        wi = self._index(cols, out_w, x.device).view(n, 1, 1, out_w)
        return x[bi, ci, ri, wi]

    def replicate_take(self, x: torch.Tensor, size) -> torch.Tensor:
        """x (N, C, h', w') with each run's true size ``size(run)`` = (h, w) in it: the first
        h' x w' pixels of each sample replicate-padded beyond its true size (its edge rows and
        columns repeated)."""
        oh, ow = x.shape[-2:]
        return self.take(x, lambda r, n: np.minimum(np.arange(n), size(r)[0] - 1),
                         lambda r, n: np.minimum(np.arange(n), size(r)[1] - 1), oh, ow)

    def reflect_take(self, x: torch.Tensor, pad: int) -> torch.Tensor:
        """(N, C, H + 2 pad, W + 2 pad): each sample reflect-101 padded by ``pad`` at its own size
        (what ``filtering.reflect_pad`` gives it alone), inside the padded frame."""
        return self.take(x, lambda r, n: _reflect(r.h, pad, n), lambda r, n: _reflect(r.w, pad, n),
                         self.h + 2 * pad, self.w + 2 * pad)


def _reflect(size: int, pad: int, length: int) -> np.ndarray:
    """Reflect-101 source rows for padded rows 0..length-1 of an image of ``size`` rows padded
    by ``pad`` (beyond its own padded size: clamped, any valid row would do)."""
    i = np.minimum(np.arange(length) - pad, size - 1 + pad)
    if size == 1:
        return np.zeros(length, dtype=np.int64)
    period = 2 * size - 2
    i = np.remainder(i, period)
    return np.where(i >= size, period - i, i)


@functools.lru_cache(maxsize=None)
def _arange_base(device: torch.device) -> torch.Tensor:
    return torch.arange(1 << 14, device=device)


def _arange(n: int, device: torch.device) -> torch.Tensor:
    """arange(n) on ``device`` (a read-only slice of one kept per device)."""
    return _arange_base(device)[:n] if n <= 1 << 14 else torch.arange(n, device=device)


class UnitDraws:
    """The noise draws of a layout (``srcore.degrade.noise.Draws``): each run (a batch) from its
    own generator (``gens``, one per run), on its own size, as the one-batch-at-a-time pipeline
    draws them, then placed (replicate padding, so the padding stays a replicate padding through
    the noise arithmetic). Each generator sees the same calls in the same order as alone."""

    def __init__(self, layout: Layout, gens: Sequence[torch.Generator | None]):
        if len(gens) != len(layout.runs):
            raise ValueError(f"{len(gens)} generators for {len(layout.runs)} runs")
        self.layout, self.gens = layout, list(gens)

    def randn(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return self.layout.place([torch.randn((r.count, c, r.h, r.w), generator=g, device=x.device, dtype=x.dtype)
                                  for r, g in zip(self.layout.runs, self.gens)])

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        return self.layout.place([torch.poisson(v, generator=g) for v, g in zip(self.layout.views(rates), self.gens)])
