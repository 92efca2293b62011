"""DropPath (stochastic depth; Huang et al., ECCV 2016, as timm / SwinIR / HAT use it;
../shared/REGULARIZERS.md §3) on the residual branches.

At every ``inblock<k>`` site (block k's residual branch, before its scaling and the add) a
whole sample's branch output is zeroed with probability r_k and the kept samples are scaled
by 1 / (1 − r_k), so the expectation is unchanged and the block passes its input through for
the dropped samples. ``schedule``: ``constant`` (r_k = rate) or ``linear`` (r_k rises from 0
at block 1 to ``rate`` at the last block, SwinIR's ``torch.linspace(0, rate, depth)``). The
identity at eval. SwinIR and HAT carry their own drop path (rate 0.1 by default); this one
is for the CNN backbones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from srcore import noise

from .base import Regularizer, check_choice, check_real, register_regularizer
from .sites import numbered_sites

SCHEDULES = ("constant", "linear")


class DropPathLayer(nn.Module):
    """Zero each sample with probability ``rate``, scale the kept ones by 1 / (1 − rate)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return noise.drop_path(x, self.rate) if self.training else x

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


@register_regularizer
class DropPath(Regularizer):
    """``{"name": "droppath", "rate": 0.1, "schedule": "linear"}``."""

    name = "droppath"

    def __init__(self, rate: float, schedule: str):
        super().__init__()
        self.rate = check_real(self.name, "rate", rate, 0, 1, high_open=True)
        self.schedule = check_choice(self.name, "schedule", schedule, SCHEDULES)
        self.rates: dict[str, float] = {}  # per site; set by ``resolve``

    def settings(self) -> dict:
        return {"rate": self.rate, "schedule": self.schedule}

    def resolve(self, sites: Sequence[str]) -> frozenset[str]:
        branches = numbered_sites(sites, "inblock")
        if not branches:
            raise ValueError(f"regularizers.{self.name} acts on residual branches (inblock<k> sites); this "
                             f"network's sites are {', '.join(sites)}")
        depth = len(branches)
        if self.schedule == "constant":
            self.rates = {s: self.rate for s in branches}
        else:  # linear, 0 at the first block: a single block gets 0, as linspace(0, rate, 1)
            self.rates = {s: self.rate * k / (depth - 1) if depth > 1 else 0.0 for k, s in enumerate(branches)}
        return frozenset(branches)

    def site_module(self, site: str) -> nn.Module:
        return DropPathLayer(self.rates[site])
