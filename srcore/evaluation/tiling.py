"""Tiled inference: super-resolve a large LR image tile by tile (``eval.tile``), for GPUs whose
memory does not hold the whole image's activations.

The LR image is cut into a grid of ``tile`` x ``tile`` cores (the last row and column smaller);
each core is run with ``overlap`` extra LR pixels of real context on every side (fewer where the
image ends), and only the core's part of the output (``scale`` x the core) is kept. A network
whose output pixel depends on the LR pixels within ``r`` of it (its receptive-field radius, in
LR pixels) gives, wherever ``overlap >= r``, the same values as whole-image inference: every
kept output pixel sees exactly the inputs it sees in the whole image, zero padding only where the
image itself ends. They are equal up to float rounding (convolution kernels sum in an order
that may depend on the input's size: at most 6e-8 on a [0, 1] scale measured, rarely one 8-bit
level after rounding). SRResNet (``num_block`` blocks, x4) has r = ``2 * num_block + 3`` LR
pixels (conv_first, two convs per block and upconv1 at LR; upconv2, conv_hr and conv_last at 2x
and 4x add one LR pixel; the bilinear skip needs one), e.g. 11 for the demo's 4 blocks, 35 for
the paper's 16. Measured on a tiny SRResNet (2 blocks, tile 16): max |tiled - whole| = 0.4 with
no overlap, 1e-5 at 1 pixel, 2e-7 at 3, 6e-8 (rounding) from 4 to 6, and 0 from 7 = r on. A
smaller overlap changes the pixels near the seams only. RRDB's receptive field is hundreds of
pixels: its tiled output approaches the whole image's as the overlap grows.
Networks with global operations (attention over the whole image, normalisation over it) are not
receptive-field limited: SwinIR / HAT windows shift with the tile origin, so their tiled output
differs near the seams whatever the overlap; use a tile that is a multiple of their window size
and a generous overlap, and measure (``tests/test_eval_speed.py`` shows how).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def tile_starts(size: int, tile: int) -> list[int]:
    """Start offsets of the cores along one axis: 0, tile, 2 * tile, ... below ``size``."""
    return list(range(0, size, tile))


def tiled_forward(model: torch.nn.Module, x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """``model(x)`` for an ``NxCxHxW`` batch, computed tile by tile (see the module's notes).

    The output scale is read from the first tile's output, which must be an integer multiple
    of its input in both directions."""
    import torch

    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"eval.tile must be a positive integer or null, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"eval.tile_overlap must be a non-negative integer, got {overlap!r}")
    n, _, h, w = x.shape
    if h <= tile and w <= tile:
        return model(x)
    out = None
    for top in tile_starts(h, tile):
        for left in tile_starts(w, tile):
            bottom, right = min(top + tile, h), min(left + tile, w)
            t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
            t1, l1 = min(bottom + overlap, h), min(right + overlap, w)
            y = model(x[:, :, t0:t1, l0:l1])
            sh, sw = y.shape[2] // (t1 - t0), y.shape[3] // (l1 - l0)
            if y.shape[2] != sh * (t1 - t0) or y.shape[3] != sw * (l1 - l0):
                raise ValueError(f"tiled inference: a {t1 - t0}x{l1 - l0} tile gave a {tuple(y.shape[2:])} output, "
                                 "not an integer multiple")
            if out is None:
                out = torch.empty((n, y.shape[1], h * sh, w * sw), dtype=y.dtype, device=y.device)
            out[:, :, top * sh:bottom * sh, left * sw:right * sw] = \
                y[:, :, (top - t0) * sh:(bottom - t0) * sh, (left - l0) * sw:(right - l0) * sw]
    return out
