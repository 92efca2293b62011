"""Where dropout goes: one placement vocabulary shared by both backbones.

A *site* is a place in a network where dropout may act. Every model owns a
parameter-free module at each of its sites (``nn.Identity`` where no dropout is
placed, the dropout module where it is), so state_dict keys never depend on the
dropout settings and interpretation tools can hook any site.

Site names, in forward order:
    first                  after conv_first (+ its activation for SRResNet)
    inblock<k>, b<k>       inside residual block k, on its residual branch just
                           before the residual scaling/add; then after block k
    up1, up2               after each upsampling stage (incl. its activation)
    hr                     input of conv_hr
    last                   input of conv_last (after conv_hr's activation):
                           the paper's recommended "last-conv" position

User-facing positions (``dropout.position``) expand to sites, see
``resolve_sites``: none, first, b<k>, middle, up1, up2, hr, last, all, half,
quarter, or a list of them (their union).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence

from torch import nn

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
    """Channel-wise (Dropout2d, zeroes whole feature maps: the paper's choice) or element-wise dropout."""
    kind, p = check_kind(kind), check_p(p)
    return nn.Dropout2d(p) if kind == "channel" else nn.Dropout(p)


def site_names(num_blocks: int, num_up: int = 2) -> tuple[str, ...]:
    """All site names of a network, in forward order."""
    body = [s for k in range(1, num_blocks + 1) for s in (f"inblock{k}", f"b{k}")]
    return ("first", *body, *(f"up{i}" for i in range(1, num_up + 1)), "hr", "last")


def _allowed(num_blocks: int, num_up: int) -> str:
    ups = ", ".join(f"up{i}" for i in range(1, num_up + 1))
    return (f"Allowed positions: none, first, b1..b{num_blocks}, middle, {ups}, hr, last, all, half, quarter "
            "(or a list of them)")


def resolve_sites(position, num_blocks: int, num_up: int = 2) -> frozenset[str]:
    """Expand ``dropout.position`` (a string or a non-string sequence of strings) to site names.

    ``num_blocks`` is the number of residual blocks in the body; ``num_up`` the number of
    upsampling stages (2 except for SRResNet x2/x3, which has one).
    """
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, numbers.Integral) or num_blocks < 1:
        raise ValueError(f"num_blocks={num_blocks!r} must be a positive integer")
    allowed = _allowed(num_blocks, num_up)

    if isinstance(position, str):
        items = [position]
        if "," in position:
            raise ValueError(f"dropout.position={position!r}: give several positions as a list, "
                             f"e.g. ['b4', 'last'], not a comma-separated string. {allowed}")
    elif isinstance(position, Sequence):  # list, tuple, OmegaConf ListConfig
        items = list(position)
        if not items:
            raise ValueError(f"dropout.position={position!r} is an empty list; use 'none' for no dropout. {allowed}")
        if len(items) > 1 and "none" in items:
            raise ValueError(f"dropout.position={items!r}: 'none' cannot be combined with other positions. "
                             f"{allowed}")
    else:
        raise ValueError(f"dropout.position={position!r} must be a string or a list of strings. {allowed}")

    sites: set[str] = set()
    for item in items:
        sites |= _resolve_one(item, num_blocks, num_up, allowed)
    return frozenset(sites)


def _resolve_one(item, n: int, num_up: int, allowed: str) -> set[str]:
    if not isinstance(item, str):
        raise ValueError(f"dropout.position item {item!r} is not a string. {allowed}")

    def inblocks(count: int) -> set[str]:  # inside the last `count` blocks
        return {f"inblock{k}" for k in range(n - count + 1, n + 1)}

    if item == "none":
        return set()
    if item in ("first", "hr", "last"):
        return {item}
    if item == "middle":
        return {f"b{(n + 1) // 2}"}  # SRResNet 16 -> b8, RRDB 23 -> b12
    if item == "all":
        return inblocks(n)
    if item == "half":
        return inblocks(math.ceil(n / 2))
    if item == "quarter":
        return inblocks(math.ceil(n / 4))
    m = re.fullmatch(r"up(\d+)", item)
    if m:
        if not 1 <= int(m.group(1)) <= num_up:
            raise ValueError(f"dropout.position={item!r} is out of range: this network has {num_up} upsampling "
                             f"stage(s). {allowed}")
        return {f"up{int(m.group(1))}"}
    m = re.fullmatch(r"b(\d+)", item)
    if m:
        k = int(m.group(1))
        if not 1 <= k <= n:
            raise ValueError(f"dropout.position={item!r} is out of range: this network has {n} residual blocks, "
                             f"so b<k> needs 1 <= k <= {n}. {allowed}")
        return {f"b{k}"}
    raise ValueError(f"dropout.position={item!r} is not a known position. {allowed}")


def validate_dropout(position, p, kind, num_blocks: int, num_up: int = 2) -> frozenset[str]:
    """Pre-flight check of all three dropout settings at once; returns the resolved sites."""
    check_kind(kind)
    check_p(p)
    return resolve_sites(position, num_blocks, num_up)


class DropoutSitesMixin:
    """Site bookkeeping shared by the backbones.

    A model calls ``_init_dropout`` first, builds each block with
    ``site=self.make_site(f"inblock{k}")`` and finally ``self.sites = self.make_outer_sites()``
    (an nn.ModuleDict of the non-block sites). Site modules hold no parameters, so the
    state_dict keys stay exactly BasicSR's.
    """

    def _init_dropout(self, position, p, kind, num_blocks: int, num_up: int) -> None:
        self.dropout_sites: frozenset[str] = validate_dropout(position, p, kind, num_blocks, num_up)
        self.dropout_position = position if isinstance(position, str) else tuple(position)
        self.dropout_p, self.dropout_kind = float(p), kind
        self._site_order = site_names(num_blocks, num_up)

    def make_site(self, name: str) -> nn.Module:
        if name in self.dropout_sites:
            return make_dropout(self.dropout_kind, self.dropout_p)
        return nn.Identity()

    def make_outer_sites(self) -> nn.ModuleDict:
        return nn.ModuleDict({n: self.make_site(n) for n in self._site_order if not n.startswith("inblock")})

    def site_modules(self) -> dict[str, nn.Module]:
        """All site modules by name, in forward order (for forward hooks)."""
        return {n: self.body[int(n[len("inblock"):]) - 1].site if n.startswith("inblock") else self.sites[n]
                for n in self._site_order}
