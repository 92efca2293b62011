"""The random masks of a network's training forward pass, made so that a fused group of jobs
(``srcore.train_group``) can give each job its own.

Every stochastic operation of the networks goes through this module: ``feature_dropout``
(``Dropout2d``), ``dropout`` (element-wise), ``adaptive_dropout`` (Adaptive Dropout's mix),
``drop_path`` (this project's DropPath) and ``stochastic_depth`` (SwinIR / HAT's). Alone --
always, but inside a fused group's forward pass -- each is exactly the code it replaces, drawing
from the global generator: a job's results do not change.

A fused group runs K jobs' networks as one vmapped model, yet each job's masks must be the ones
it would draw alone, from its own stream, with its own probabilities. Each operation is ``x``
times a random multiplier (times ``1 / keep`` for stochastic depth), so:

- ``recording()``: a forward pass in which no operation draws: each appends a ``Draw`` (its
  kind, the multiplier's shape and dtype, its probability and weight) and returns ``x``; a
  job's plan;
- ``make(draw)`` draws one multiplier from the global generator exactly as the operation would
  (the group swaps each job's generator state in before its draws), or returns ones where the
  operation would draw nothing (p = 0, an Adaptive Dropout site switched off);
- ``replaying(multipliers)``: inside the vmapped forward every operation multiplies by the next
  of ``multipliers`` (the jobs' multipliers, stacked) instead of drawing.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Draw(NamedTuple):
    """One operation's multiplier: ``kind`` (feature_dropout | dropout | adaptive_dropout |
    drop_path | stochastic_depth), its shape, dtype and device, ``p`` (the probability of
    dropping) and ``weight`` (Adaptive Dropout's w: x is mixed as w·x + (1 − w)·dropout(x))."""

    kind: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    p: float
    weight: float = 0.0

    @property
    def draws(self) -> bool:
        """Whether the operation draws random numbers (else its multiplier is one)."""
        return self.p > 0 and self.weight != 1.0


_state = threading.local()


def _mode() -> str | None:
    return getattr(_state, "mode", None)


@contextlib.contextmanager
def recording() -> Iterator[list[Draw]]:
    """Within the block no operation draws; each appends its ``Draw`` to the yielded list."""
    saved = _mode(), getattr(_state, "log", None)
    _state.mode, _state.log = "record", []
    try:
        yield _state.log
    finally:
        _state.mode, _state.log = saved


@contextlib.contextmanager
def replaying(multipliers: Sequence[torch.Tensor]):
    """Within the block each operation multiplies by the next of ``multipliers``; the block must
    use them all."""
    saved = _mode(), getattr(_state, "bank", None)
    _state.mode, _state.bank = "replay", iter(multipliers)
    try:
        yield
        if next(_state.bank, None) is not None:
            raise RuntimeError("a fused forward pass made fewer random draws than its plan holds")
    finally:
        _state.mode, _state.bank = saved


def _multiplier(draw: Draw) -> torch.Tensor | None:
    """Record mode: record ``draw`` and return None (the operation returns ``x``); replay mode:
    the next multiplier; alone: None too, and the caller draws as it always did."""
    mode = _mode()
    if mode == "replay":
        try:
            return next(_state.bank)
        except StopIteration:
            raise RuntimeError("a fused forward pass made more random draws than its plan holds") from None
    if mode == "record":
        _state.log.append(draw)
    return None


def make(draw: Draw) -> torch.Tensor:
    """``draw``'s multiplier from the global generator, drawn exactly as the operation draws it
    alone (the same calls, in the same order), or ones when it draws nothing."""
    kind, shape, dtype, device, p, weight = draw
    if not draw.draws:
        return torch.ones(shape, dtype=dtype, device=device)
    if kind in ("feature_dropout", "adaptive_dropout") or (kind == "dropout" and device.type == "cpu"):
        noise = torch.empty(shape, dtype=dtype, device=device).bernoulli_(1 - p).div_(1 - p)  # ATen's _dropout_impl
        return weight + (1 - weight) * noise if kind == "adaptive_dropout" else noise
    if kind == "dropout":  # on CUDA F.dropout is the fused kernel, with its own way of drawing
        return torch.native_dropout(torch.ones(shape, dtype=dtype, device=device), p, True)[0]
    if kind == "drop_path":
        return torch.empty(shape, dtype=dtype, device=device).bernoulli_(1 - p) / (1 - p)
    if kind == "stochastic_depth":
        return (1 - p + torch.rand(shape, dtype=dtype, device=device)).floor_()
    raise ValueError(f"unknown kind of draw {kind!r}")


def _per_sample(x: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.dim() - 1)


def feature_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``F.dropout2d(x, p, training=True)``: whole feature maps of an (N, C, H, W) batch."""
    m = _multiplier(Draw("feature_dropout", (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2), x.dtype, x.device, p))
    if m is not None:
        return x * m
    return x if p == 0 or _mode() == "record" else F.dropout2d(x, p, training=True)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``F.dropout(x, p, training=True)``: element-wise."""
    m = _multiplier(Draw("dropout", tuple(x.shape), x.dtype, x.device, p))
    if m is not None:
        return x * m
    return x if p == 0 or _mode() == "record" else F.dropout(x, p, training=True)


def adaptive_dropout(x: torch.Tensor, p: float, weight: float) -> torch.Tensor:
    """Adaptive Dropout's ``weight·x + (1 − weight)·Dropout2d(p)(x)``; ``x`` at weight 1 (no mask
    drawn). Fused, ``x`` times the mix's multiplier (the same up to float rounding)."""
    m = _multiplier(Draw("adaptive_dropout", (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2), x.dtype, x.device,
                         p, weight))
    if m is not None:
        return x * m
    if weight == 1.0 or _mode() == "record":
        return x
    return weight * x + (1.0 - weight) * F.dropout2d(x, p, training=True)


def drop_path(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Zero each sample with probability ``rate`` and scale the kept ones by 1 / (1 − rate)
    (this project's DropPath: a Bernoulli mask divided by keep)."""
    m = _multiplier(Draw("drop_path", _per_sample(x), x.dtype, x.device, rate))
    if m is not None:
        return x * m
    if rate == 0.0 or _mode() == "record":
        return x
    keep = 1.0 - rate
    mask = torch.empty(_per_sample(x), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * (mask / keep)


def stochastic_depth(x: torch.Tensor, p: float) -> torch.Tensor:
    """SwinIR / HAT's (timm's) drop path: ``x / keep`` times a floor(keep + U[0, 1)) mask per sample."""
    m = _multiplier(Draw("stochastic_depth", _per_sample(x), x.dtype, x.device, p))
    if p == 0 or (m is None and _mode() == "record"):
        return x
    keep = 1 - p
    if m is None:
        m = (keep + torch.rand(_per_sample(x), dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * m


class Dropout2d(nn.Dropout2d):
    """``nn.Dropout2d`` through ``feature_dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return feature_dropout(x, self.p) if self.training else x


class Dropout(nn.Dropout):
    """``nn.Dropout`` through ``dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p) if self.training else x
