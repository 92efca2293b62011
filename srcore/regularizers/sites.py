"""Where a regulariser may act: the site names every backbone shares, and the positions users write.

A *site* is a place in a network where a regulariser may put a module. Every model owns a
parameter-free module at each of its sites (``nn.Identity`` where nothing is placed), so
state_dict keys never depend on the regularisers and interpretation tools can hook any site.

Site names, in forward order:
    first                  after conv_first (+ its activation for SRResNet)
    mid<k>                 inside residual block k, on the output of the first conv of
                           its residual branch, before that conv's activation (only in
                           backbones whose blocks have one: ``site_names(..., mid=True)``).
                           SRResNet/EDSR: conv1 of the block. RRDB: conv1 of the block's
                           first dense block (num_grow_ch channels): the first conv the
                           branch applies. Adaptive Dropout's block sites. In-place
                           activations follow it, so a forward hook there must clone.
    inblock<k>, b<k>       inside residual block k, on its residual branch just
                           before the residual scaling/add; then after block k
    up1, up2               after each upsampling stage (incl. its activation)
    hr                     input of conv_hr
    last                   input of conv_last (after conv_hr's activation):
                           the paper's recommended "last-conv" position

User-facing positions (e.g. ``dropout.position``) expand to sites, see ``resolve_sites``:
none, first, b<k>, middle, up1, up2, hr, last, all, half, quarter, or a list of them (their
union). Resolution reads only the network's site list, so a new backbone gets the whole
vocabulary by naming its sites this way. ``mid<k>`` is no position: regularisers that act
there (Adaptive Dropout) pick their sites by kind (``numbered_sites``).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence

_BLOCK = re.compile(r"b(\d+)")
_UP = re.compile(r"up(\d+)")
_INBLOCK = re.compile(r"inblock(\d+)")


def site_names(num_blocks: int, num_up: int = 2, *, mid: bool = False) -> tuple[str, ...]:
    """The sites of a head / residual-block body / upsampler network, in forward order;
    ``mid``: its blocks have a ``mid<k>`` site (after the first conv of the branch)."""
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, numbers.Integral) or num_blocks < 1:
        raise ValueError(f"num_blocks={num_blocks!r} must be a positive integer")
    in_block = ("mid", "inblock") if mid else ("inblock",)
    body = [s for k in range(1, num_blocks + 1) for s in (*(f"{kind}{k}" for kind in in_block), f"b{k}")]
    return ("first", *body, *(f"up{i}" for i in range(1, num_up + 1)), "hr", "last")


def numbered_sites(sites: Sequence[str], kind: str) -> tuple[str, ...]:
    """The sites ``<kind><k>`` (e.g. kind "mid": mid1, mid2, ...) of a site list, in its order."""
    pattern = re.compile(rf"{re.escape(kind)}\d+")
    return tuple(s for s in sites if pattern.fullmatch(s))


def _count(sites: Sequence[str], pattern: re.Pattern) -> int:
    return sum(1 for s in sites if pattern.fullmatch(s))


def allowed_positions(sites: Sequence[str]) -> str:
    """The sentence every position error ends with, listing what this network accepts."""
    n, inblocks = _count(sites, _BLOCK), _count(sites, _INBLOCK)
    words = ["none", *(["first"] if "first" in sites else []), *([f"b1..b{n}", "middle"] if n else []),
             *(s for s in sites if _UP.fullmatch(s)), *(s for s in ("hr", "last") if s in sites),
             *(["all", "half", "quarter"] if inblocks else [])]
    return f"Allowed positions: {', '.join(words)} (or a list of them)"


def resolve_sites(position, sites: Sequence[str], key: str) -> frozenset[str]:
    """Expand ``position`` (a string or a non-string sequence of strings) to names in ``sites``.

    ``sites`` is the network's site list (its backbone's ``site_names``); ``key`` names the
    setting in error messages, e.g. ``"dropout.position"``.
    """
    allowed = allowed_positions(sites)
    if isinstance(position, str):
        items = [position]
        if "," in position:
            raise ValueError(f"{key}={position!r}: give several positions as a list, "
                             f"e.g. ['b4', 'last'], not a comma-separated string. {allowed}")
    elif isinstance(position, Sequence):  # list, tuple, OmegaConf ListConfig
        items = list(position)
        if not items:
            raise ValueError(f"{key}={position!r} is an empty list; use 'none' for no {key.split('.')[0]}. "
                             f"{allowed}")
        if len(items) > 1 and "none" in items:
            raise ValueError(f"{key}={items!r}: 'none' cannot be combined with other positions. {allowed}")
    else:
        raise ValueError(f"{key}={position!r} must be a string or a list of strings. {allowed}")

    resolved: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{key} item {item!r} is not a string. {allowed}")
        resolved |= _resolve_one(item, sites, key, allowed)
    return frozenset(resolved)


def _resolve_one(item: str, sites: Sequence[str], key: str, allowed: str) -> set[str]:
    n, num_up = _count(sites, _BLOCK), _count(sites, _UP)
    inblocks = _count(sites, _INBLOCK)

    def last_inblocks(count: int) -> set[str]:
        return {f"inblock{k}" for k in range(inblocks - count + 1, inblocks + 1)}

    if item == "none":
        return set()
    if item in ("first", "hr", "last") and item in sites:
        return {item}
    if item == "middle" and n:
        return {f"b{(n + 1) // 2}"}  # SRResNet 16 -> b8, RRDB 23 -> b12
    if item in ("all", "half", "quarter") and inblocks:
        return last_inblocks({"all": inblocks, "half": math.ceil(inblocks / 2),
                              "quarter": math.ceil(inblocks / 4)}[item])
    m = _UP.fullmatch(item)
    if m:
        if not 1 <= int(m.group(1)) <= num_up:
            raise ValueError(f"{key}={item!r} is out of range: this network has {num_up} upsampling "
                             f"stage(s). {allowed}")
        return {f"up{int(m.group(1))}"}
    m = _BLOCK.fullmatch(item)
    if m:
        k = int(m.group(1))
        if not 1 <= k <= n:
            raise ValueError(f"{key}={item!r} is out of range: this network has {n} residual blocks, "
                             f"so b<k> needs 1 <= k <= {n}. {allowed}")
        return {f"b{k}"}
    raise ValueError(f"{key}={item!r} is not a known position. {allowed}")
