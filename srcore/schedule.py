"""Learning-rate schedule and weight averaging used by the paper's (BasicSR) training."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler


class CosineAnnealingRestartLR(LRScheduler):
    """Cosine annealing with restarts, as BasicSR's scheduler of the same name.

    ``periods`` are the lengths of the cycles; cycle i starts at ``base_lr *
    restart_weights[i]`` and decays to ``eta_min`` by its end.
    """

    def __init__(self, optimizer, periods: Sequence[int], restart_weights: Sequence[float] = (1,),
                 eta_min: float = 0.0, last_epoch: int = -1):
        if len(periods) != len(restart_weights):
            raise ValueError(f"periods {list(periods)} and restart_weights {list(restart_weights)} differ in length")
        self.periods, self.restart_weights, self.eta_min = list(periods), list(restart_weights), eta_min
        self.cumulative = [sum(self.periods[: i + 1]) for i in range(len(self.periods))]
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        step = self.last_epoch
        idx = next((i for i, end in enumerate(self.cumulative) if step <= end), len(self.cumulative) - 1)
        start = self.cumulative[idx - 1] if idx > 0 else 0
        weight, period = self.restart_weights[idx], self.periods[idx]
        cos = 1 + math.cos(math.pi * min(step - start, period) / period)
        return [self.eta_min + weight * 0.5 * (base - self.eta_min) * cos for base in self.base_lrs]


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied.

    Multi-tensor (``torch._foreach_lerp_``/``_foreach_copy_``): a few kernel launches for the
    whole network instead of one per tensor, with the same arithmetic as ``Tensor.lerp_`` per
    parameter (bit-identical: tests/test_train.py)."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if ema_params:
        torch._foreach_lerp_(ema_params, params, 1 - decay)
    ema_buffers, buffers = list(ema.buffers()), list(model.buffers())
    if ema_buffers:
        torch._foreach_copy_(ema_buffers, buffers)
