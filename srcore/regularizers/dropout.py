"""Dropout at chosen sites (Kong et al., "Reflash Dropout in Image Super-Resolution", CVPR 2022).

Channel-wise dropout (``Dropout2d``, whole feature maps: the paper's choice) or element-wise
dropout, with probability ``p``, at the sites a position expands to (``srcore.regularizers.sites``).
It neither follows the iteration nor adds a loss term: training with it is plain L1 training
whose forward passes draw the masks from torch's global RNG.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from torch import nn

from srcore import noise

from .base import Regularizer, register_regularizer
from .sites import resolve_sites

DROPOUT_KINDS = ("channel", "element")


def check_kind(kind) -> str:
    if not isinstance(kind, str) or kind not in DROPOUT_KINDS:
        raise ValueError(f"dropout.kind={kind!r} is not a known kind. Allowed kinds: {', '.join(DROPOUT_KINDS)}")
    return kind


def check_p(p) -> float:
    # bool is a numbers.Real subclass, but p=True is certainly a config mistake.
    ok = isinstance(p, numbers.Real) and not isinstance(p, bool) and 0 <= p < 1  # NaN fails 0 <= p
    if not ok:
        raise ValueError(f"dropout.p={p!r} is invalid: it must be a real number in [0, 1)")
    return float(p)


def make_dropout(kind: str, p: float) -> nn.Module:
    """Channel-wise (Dropout2d, zeroes whole feature maps) or element-wise dropout (``nn``'s,
    drawing through ``srcore.noise`` so a fused group gives each job its own masks)."""
    kind, p = check_kind(kind), check_p(p)
    return noise.Dropout2d(p) if kind == "channel" else noise.Dropout(p)


@register_regularizer
class Dropout(Regularizer):
    """``{"name": "dropout", "position": "last", "p": 0.7, "kind": "channel"}``."""

    name = "dropout"

    def __init__(self, position, p: float, kind: str):
        super().__init__()
        self.kind, self.p = check_kind(kind), check_p(p)  # the order of today's pre-flight messages
        self.position = position if isinstance(position, str) or not isinstance(position, Sequence) else list(position)

    def settings(self) -> dict:
        return {"position": self.position, "p": self.p, "kind": self.kind}

    def resolve(self, sites: Sequence[str]) -> frozenset[str]:
        return resolve_sites(self.position, sites, "dropout.position")

    def site_module(self, site: str) -> nn.Module:
        return make_dropout(self.kind, self.p)
