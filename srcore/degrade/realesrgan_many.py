"""``RealESRGANDegradation.many`` on the ``torch`` backend: K batches (times ``views``) degraded
in one call, the same draws and the same per-sample results as K calls, far fewer launches.

The draws come first, on the host, in the order of K calls: per batch ``sample_params`` (after
``draw_crop`` with views, as ``Degradation.views``), so the generator ends where K calls leave
it. Every batch x view is then a *unit* of n samples with its own parameters and its own noise
generator (seeded from its own ``seed``, as ``apply`` seeds it). What runs once for all units:

* the parameters: concatenated on the host, copied to the device once per field;
* every kernel (stage-1 and stage-2 blur, the final sinc: all 21 x 21, whatever the shape) built
  in one go; the per-batch USM (``usm_on_load`` off) on all batches at once;
* the stage-1 blur (all units share the crops' shape): one grouped convolution;
* the final sinc (all units are at the LR size then) and the JPEG of the units that compress
  last, and the crops: one gather for the LR patches and one for the HR ones.

Between the first random resize and the resize to the LR size the units have their own sizes
(the random resizes are drawn per batch: the official behaviour). There, units are *grouped*
(``srcore.degrade.ragged``): each group is one tensor, every unit top-left aligned and
replicate-padded to the group's largest size, on which the stage-1 noise and JPEG and the stage-2
blur (stage 1 groups), the stage-2 noise and the JPEG of the units that compress before the final
resize (stage 2 groups) run once per group, with each unit's result inside its own size equal
to what it gets alone. Per unit (or per run of consecutive units with the same sizes and
resize): the three resizes and the noise draws (from each unit's own generator, on its own
size). ``group_px`` (``plan_groups``) prices a group's launches in padded pixels: on the CPU
(compute-bound) groups only join units of one size; on a GPU (launch-bound) larger groups.

No host read, no branch on a tensor's value: every size, order and group is decided from the
host's parameters, every index is built on the host and copied without waiting.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from srcore.degrade import ragged
from srcore.degrade.common import draw_crop, noise_generator, quantize
from srcore.degrade.filtering import filter2d, filter2d_ragged
from srcore.degrade.jpeg import jpeg_compress, jpeg_compress_ragged
from srcore.degrade.kernels import final_sinc_kernels, kernels_from_params, pulse_kernels
from srcore.degrade.noise import add_noise
from srcore.degrade.ragged import Layout, Run, UnitDraws, plan_groups
from srcore.degrade.realesrgan import params_to
from srcore.degrade.resize import resize
from srcore.degrade.usm import usm_sharp

# what one more padded group's launches are worth, in padded pixels, where ``group_px`` is None:
# on the CPU nothing (compute-bound: only units of one size share a group); elsewhere (a GPU,
# launch-bound) about a 16 x 256 px batch's worth. benchmarks/degradation_device.py --group-px
GROUP_PX = {"cpu": 0.0, "other": float(1 << 20)}


def _cat(dicts: Sequence[dict], keys: Sequence[str]) -> dict:
    """The per-sample parameters ``keys`` of several ``sample_params`` dicts, concatenated (host)."""
    out = {}
    for key in keys:
        first = dicts[0][key]
        if isinstance(first, dict):
            out[key] = {k: torch.cat([d[key][k] for d in dicts]) for k in first}
        else:
            out[key] = torch.cat([d[key] for d in dicts])
    return out


def _slice(p: dict, s: int, e: int) -> dict:
    return {k: v[s:e] for k, v in p.items()}


def _runs_of(keys: Sequence) -> list[tuple[int, int]]:
    """[start, stop) of each run of equal consecutive keys."""
    runs, i = [], 0
    while i < len(keys):
        j = i + 1
        while j < len(keys) and keys[j] == keys[i]:
            j += 1
        runs.append((i, j))
        i = j
    return runs


def degrade_many(deg, hrs: Sequence[torch.Tensor], g: torch.Generator, views: int, group_px: float | None = None
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[degraded_views(deg, hr, g, views) for hr in hrs]`` for a ``RealESRGANDegradation`` on
    the torch backend with batches of one shape (see the module doc)."""
    xs = [deg._check(hr) for hr in hrs]
    n, _, h, w = xs[0].shape
    dev, sc = xs[0].device, deg.scale
    if group_px is None:
        group_px = GROUP_PX["cpu" if dev.type == "cpu" else "other"]

    # the draws, in the order of one call per batch (Degradation.views: the crop, then each view)
    units = []  # (batch, params, crop)
    for b in range(len(xs)):
        crop = None
        if views > 1:
            crop = draw_crop(n, (h // sc, w // sc), deg.gt_patch, sc, g)
        units += [(b, deg.sample_params(n, g), crop) for _ in range(views)]
    prm = [u[1] for u in units]
    gens = [noise_generator(dev, p["seed"]) for p in prm]

    # the targets (USM per batch on all batches at once) and the stage-1 input in stage-1 order
    plan1 = [deg._resize_plan((h, w), (h, w), q["resize1"], None) for q in prm]
    order1 = sorted(range(len(units)), key=lambda i: (-plan1[i][1][0] * plan1[i][1][1], plan1[i][1],
                                                       repr(plan1[i][0]), i))
    if deg.usm_per_batch:
        p = deg.params
        target = usm_sharp(torch.cat(xs) if len(xs) > 1 else xs[0], p.usm_radius, p.usm_weight, p.usm_threshold,
                           "torch")
        targets = list(target.split(n))
        rows = np.concatenate([np.arange(n) + units[i][0] * n for i in order1])
        x = target.index_select(0, torch.from_numpy(rows).to(dev, non_blocking=True))
    else:  # the crops are the targets
        targets = xs
        x = torch.cat([xs[units[i][0]] for i in order1]) if len(units) > 1 else xs[0]
    host = _cat([prm[i] for i in order1], ("kernel1", "kernel2", "blur2", "noise1", "jpeg1"))
    # both stages' blur kernels in one build: stage 1's samples, then stage 2's
    first, second = host.pop("kernel1"), host.pop("kernel2")
    host["kernels"] = {k: torch.cat([first[k], second[k]]) for k in first}
    p1 = params_to(host, dev)
    kernels = kernels_from_params(p1["kernels"], 21)

    # stage 1: one blur for all, the resize per run of units with the same one
    out = filter2d(x, kernels[:x.shape[0]], "torch")
    blur2 = torch.where(p1["blur2"][:, None, None], kernels[x.shape[0]:], pulse_kernels(x.shape[0], 21, dev))
    runs1 = [Run(n, *plan1[i][1]) for i in order1]
    stage2 = {}  # unit -> its stage-2-resized images (n, 3, h2, w2)
    plan2 = {}
    for a, z in plan_groups(runs1, group_px):
        layout = Layout(runs1[a:z])
        pieces = []
        for s, e in _runs_of([plan1[i][0] for i in order1[a:z]]):
            u = order1[a + s]
            piece = deg._random_resize(out[(a + s) * n:(a + e) * n], (h, w), prm[u]["resize1"], None, "torch")
            _check_size(piece, plan1[u][1])
            pieces.append(piece)
        y = layout.place(pieces)
        y = add_noise(y, _slice(p1["noise1"], a * n, z * n), UnitDraws(layout, [gens[i] for i in order1[a:z]]),
                      "torch")
        y = jpeg_compress_ragged(y, p1["jpeg1"][a * n:z * n], layout)
        # stage 2: the blur (each unit's own reflect borders), the resize per run
        y = filter2d_ragged(y, blur2[a * n:z * n], layout)
        for i in order1[a:z]:
            plan2[i] = deg._resize_plan(plan1[i][1], (h, w), prm[i]["resize2"], sc)
        keys = [(plan1[i][1], plan2[i][0]) for i in order1[a:z]]
        for (s, e), view in zip(_runs_of(keys), _run_views(y, layout, _runs_of(keys), n)):
            u = order1[a + s]
            piece = deg._random_resize(view, (h, w), prm[u]["resize2"], sc, "torch")
            _check_size(piece, plan2[u][1])
            for k in range(e - s):
                stage2[order1[a + s + k]] = piece[k * n:(k + 1) * n]

    # stage 2 noise per group; units that compress before the final resize first
    jpeg_first = [prm[i]["final_order"] == "jpeg_first" for i in range(len(units))]
    order2 = sorted(range(len(units)), key=lambda i: (not jpeg_first[i], -plan2[i][1][0] * plan2[i][1][1],
                                                       plan2[i][1], prm[i]["final_mode"], i))
    p2 = params_to(_cat([prm[i] for i in order2], ("noise2", "jpeg2", "final_sinc")), dev)
    runs2 = [Run(n, *plan2[i][1]) for i in order2]
    m = sum(jpeg_first) * n  # samples of the jpeg-first units, at the front of order2
    groups2 = []  # the jpeg-first units' groups, then the others'
    for lo, hi in ((0, m // n), (m // n, len(units))):
        groups2 += [(lo + a, lo + z) for a, z in plan_groups(runs2[lo:hi], group_px)]
    lr_size = (h // sc, w // sc)
    lr_pieces = []
    for a, z in groups2:
        layout = Layout(runs2[a:z])
        y = layout.place([stage2[i] for i in order2[a:z]])
        y = add_noise(y, _slice(p2["noise2"], a * n, z * n), UnitDraws(layout, [gens[i] for i in order2[a:z]]),
                      "torch")
        if jpeg_first[order2[a]]:
            y = jpeg_compress_ragged(y.clamp(0, 1), p2["jpeg2"][a * n:z * n], layout)
        keys = [(plan2[i][1], prm[i]["final_mode"]) for i in order2[a:z]]
        for (s, e), view in zip(_runs_of(keys), _run_views(y, layout, _runs_of(keys), n)):
            lr_pieces.append(_resize_to(view, lr_size, prm[order2[a + s]]["final_mode"]))

    # the LR size for all: the final sinc, the JPEG of the units that compress last, quantise
    lr = torch.cat(lr_pieces) if len(lr_pieces) > 1 else lr_pieces[0]
    lr = filter2d(lr, final_sinc_kernels(p2["final_sinc"], 21), "torch")
    if m < lr.shape[0]:
        last = jpeg_compress(lr[m:].clamp(0, 1), p2["jpeg2"][m:], "torch")
        lr = torch.cat([lr[:m], last]) if m else last
    lr = quantize(lr)

    # the crops, in batch, view, sample order; one gather each for LR and HR (the HR from x,
    # which holds every batch's target in stage-1 order)
    pos2 = {u: k for k, u in enumerate(order2)}
    pos1 = {u: k for k, u in enumerate(order1)}
    return _crops(deg, targets, x, lr, units, pos1, pos2, n, views)


def _run_views(y: torch.Tensor, layout: Layout, runs: list[tuple[int, int]], n: int) -> list[torch.Tensor]:
    """The images of each run of units (same size) at their own size: views of ``y``."""
    out = []
    for s, e in runs:
        r = layout.runs[s]
        out.append(y[s * n:e * n, :, :r.h, :r.w])
    return out


def _resize_to(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    return resize(x, size=size, mode=mode, backend="torch")


def _check_size(x: torch.Tensor, hw: tuple[int, int]) -> None:
    if tuple(x.shape[-2:]) != tuple(hw):
        raise RuntimeError(f"super-batch plan: a resize gave {tuple(x.shape[-2:])}, planned {hw}")


def _crops(deg, targets: list[torch.Tensor], x: torch.Tensor, lr: torch.Tensor, units, pos1: dict, pos2: dict,
           n: int, views: int):
    """Per batch (hr_target, lr) as ``paired_crop`` (and ``Degradation.views``) cut them: unit u's
    target is ``targets[batch]``, also at rows ``pos1[u] * n ..`` of x; its LR at ``pos2[u] * n ..``."""
    k = len(targets)
    lh, lw = lr.shape[-2:]
    dev = lr.device
    order = [b * views + v for b in range(k) for v in range(views)]  # units are batch-major already
    if deg.gt_patch is None:
        rows = np.concatenate([pos2[u] * n + np.arange(n) for u in order])
        lr_all = lr.index_select(0, torch.from_numpy(rows).to(dev, non_blocking=True)) if views > 1 or \
            not np.array_equal(rows, np.arange(rows.size)) else lr
        out = []
        for b in range(k):
            t = targets[b]
            out.append((t if views == 1 else torch.cat([t] * views), lr_all[b * views * n:(b + 1) * views * n]))
        return out
    lq, sc = deg.gt_patch // deg.scale, deg.scale
    if lh < lq or lw < lq:
        raise ValueError(f"LR {lh}x{lw} is smaller than the LR patch {lq}")
    if views == 1:  # each sample's own drawn place, as paired_crop computes it (for all at once)
        uc = torch.cat([units[u][1]["crop"] for u in order]).to("cpu")
        tops = (uc[:, 0] * (lh - lq + 1)).long().clamp_max(lh - lq).numpy()
        lefts = (uc[:, 1] * (lw - lq + 1)).long().clamp_max(lw - lq).numpy()
    else:  # the views' shared crop (drawn by draw_crop; None where there is nothing to cut)
        crops = [units[u][2] for u in order]
        tops = np.concatenate([np.zeros(n, np.int64) if c is None else np.asarray(c.tops) for c in crops])
        lefts = np.concatenate([np.zeros(n, np.int64) if c is None else np.asarray(c.lefts) for c in crops])
    tops, lefts = tops[:, None], lefts[:, None]
    lr_rows = [pos2[u] * n + np.arange(n) for u in order]
    hr_rows = [pos1[u] * n + np.arange(n) for u in order]
    lr_out = _gather(lr, np.concatenate(lr_rows), tops + np.arange(lq), lefts + np.arange(lq))
    hr_out = _gather(x, np.concatenate(hr_rows), tops * sc + np.arange(lq * sc), lefts * sc + np.arange(lq * sc))
    m = views * n
    return [(hr_out[b * m:(b + 1) * m], lr_out[b * m:(b + 1) * m]) for b in range(k)]


def _gather(x: torch.Tensor, samples: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """out[i, c, r, q] = x[samples[i], c, rows[i, r], cols[i, q]]: one gather."""
    dev, c = x.device, x.shape[1]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(dev, non_blocking=True)

    m = samples.shape[0]
    return x[t(samples).view(m, 1, 1, 1), ragged._arange(c, dev).view(1, c, 1, 1),
             t(rows).view(m, 1, -1, 1), t(cols).view(m, 1, 1, -1)]
