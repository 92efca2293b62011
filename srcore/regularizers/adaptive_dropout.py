"""Adaptive Dropout (Xu et al., CVPR 2025, arXiv 2506.12738; the official code
xuhang07/Adpative-Dropout, ../shared/REGULARIZERS.md §1).

At each of its sites the layer mixes a feature map with its channel-dropped copy,
``y = w·x + (1 − w)·Dropout2d(p)(x)``: E[y] = x, Var[y] = (1 − w)²·x²·p / (1 − p) (with
p = 0.5: (1 − w)²·x²). At eval it is the identity for any w, so the network is the plain one.

Sites: every ``mid<k>`` (inside residual block k, on the output of the branch's first conv,
before its activation) and ``last`` (the input of conv_last): the 17 sites of the paper's
SRResNet; any backbone with mid sites gets its own count (RRDB 23 + 1).

Schedule (the official code's): every site starts at ``w0`` = 0.3, and the k-th site in
``order`` (1-based; ``shallow_first``: mid1 ... last, ``deep_first``: last ... mid1) switches
off (w = 1) from iteration ``step·k`` on, ``step`` = 20000: a hard step, the conv_last site
last at 340k for SRResNet. The weights are a pure function of the iteration, set before
every forward pass, so a resumed job continues exactly (the official code keeps them in a
list that a resume resets to 0.3: sites already switched off come back on for good).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from srcore import noise

from .base import Regularizer, check_choice, check_real, register_regularizer
from .sites import numbered_sites

ORDERS = ("shallow_first", "deep_first")


class AdaptiveDropoutLayer(nn.Module):
    """``weight·x + (1 − weight)·Dropout2d(p)(x)`` in training; ``x`` at eval and at weight 1
    (then no mask is drawn). ``weight`` is set by the regulariser, it is not a parameter."""

    def __init__(self, p: float, weight: float):
        super().__init__()
        self.p, self.weight = p, weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return noise.adaptive_dropout(x, self.p, self.weight) if self.training else x

    def extra_repr(self) -> str:
        return f"p={self.p}, weight={self.weight}"


@register_regularizer
class AdaptiveDropout(Regularizer):
    """``{"name": "adaptive_dropout", "p": 0.5, "w0": 0.3, "step": 20000, "order": "shallow_first"}``."""

    name = "adaptive_dropout"

    def __init__(self, p: float, w0: float, step: int, order: str):
        super().__init__()
        self.p = check_real(self.name, "p", p, 0, 1, high_open=True)
        self.w0 = check_real(self.name, "w0", w0, 0, 1)
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 1:
            raise ValueError(f"regularizers.{self.name}.step={step!r} must be a positive integer (iterations)")
        self.step = int(step)
        self.order = check_choice(self.name, "order", order, ORDERS)
        self.schedule: tuple[str, ...] = ()  # the sites in switch-off order; set by ``resolve``
        self.layers: dict[str, AdaptiveDropoutLayer] = {}

    def settings(self) -> dict:
        return {"p": self.p, "w0": self.w0, "step": self.step, "order": self.order}

    def resolve(self, sites: Sequence[str]) -> frozenset[str]:
        mids = numbered_sites(sites, "mid")
        if not mids or "last" not in sites:
            raise ValueError(f"regularizers.{self.name} acts at the mid<k> sites and 'last'; this network's "
                             f"sites are {', '.join(sites)}")
        shallow_first = (*mids, "last")
        self.schedule = shallow_first if self.order == "shallow_first" else shallow_first[::-1]
        return frozenset(shallow_first)

    def weight(self, site: str, iteration: int) -> float:
        """The weight w of ``x`` at ``site`` in the forward pass of (1-based) ``iteration``."""
        k = self.schedule.index(site) + 1
        return 1.0 if iteration >= self.step * k else self.w0

    def site_module(self, site: str) -> nn.Module:
        self.layers[site] = AdaptiveDropoutLayer(self.p, self.weight(site, 0))
        return self.layers[site]

    def set_iteration(self, iteration: int) -> None:
        for site, layer in self.layers.items():
            layer.weight = self.weight(site, iteration)

    def capture_key(self) -> tuple[float, ...]:
        """The sites' weights: a CUDA-graphed step is captured again when one switches off."""
        return tuple(layer.weight for layer in self.layers.values())
