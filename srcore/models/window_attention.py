"""Shifted-window self-attention machinery shared by SwinIR and HAT (Liu et al.'s Swin Transformer
as SwinIR adapted it to images of any size).

Features travel between blocks as tokens ``(b, h*w, c)``; attention runs inside non-overlapping
``window_size`` x ``window_size`` windows, every second block on windows shifted by half a
window (a cyclic roll plus a mask that keeps tokens from attending across the roll's seam).
Tensor layouts and operation order follow the official code, so the same weights give the same
numbers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from srcore import noise


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float, bound: float = 2.0) -> torch.Tensor:
    """N(0, std^2) truncated to [-bound, bound], by the inverse CDF of a uniform draw (timm's and
    BasicSR's method: the official initial weights for a seed; torch's own version changed method)."""
    cdf = [(1 + math.erf(v / std / math.sqrt(2))) / 2 for v in (-bound, bound)]
    tensor.uniform_(2 * cdf[0] - 1, 2 * cdf[1] - 1).erfinv_().mul_(std * math.sqrt(2))
    return tensor.clamp_(min=-bound, max=bound)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(b, h, w, c) -> (b * windows, window_size, window_size, c)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``window_partition``: (b * windows, ws, ws, c) -> (b, h, w, c)."""
    b = int(windows.shape[0] / (h * w / window_size / window_size))
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into the (2ws-1)^2-row bias table of each token pair's offset."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous() + (window_size - 1)
    return rel[:, :, 0] * (2 * window_size - 1) + rel[:, :, 1]


def shifted_window_mask(h: int, w: int, window_size: int, shift: int) -> torch.Tensor:
    """(windows, ws*ws, ws*ws) additive mask, -100 between tokens from different regions of the roll."""
    img_mask = torch.zeros((1, h, w, 1))
    bands = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    for region, (rows, cols) in enumerate((rows, cols) for rows in bands for cols in bands):
        img_mask[:, rows, cols, :] = region
    regions = window_partition(img_mask, window_size).view(-1, window_size * window_size)
    mask = regions.unsqueeze(1) - regions.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def drop_path_rates(rate: float, depths) -> list[list[float]]:
    """Per group, the stochastic-depth rate of each block: linear from 0 to ``rate`` over all blocks."""
    # float32 linspace on the CPU, as the official code (also when building on the meta device)
    rates = [r.item() for r in torch.linspace(0, rate, sum(depths), device="cpu")]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[s:s + d] for s, d in zip(starts, depths)]


def pad_to_window(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Reflect-pad the bottom and right edges to multiples of the window, as SwinIR's and HAT's test code."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % window_size, (-w) % window_size
    if pad_h >= h or pad_w >= w:
        raise ValueError(f"input {h}x{w} is too small to reflect-pad to a multiple of window_size={window_size} "
                         f"(each side must exceed the padding: at least {window_size // 2 + 1} pixels)")
    return F.pad(x, (0, pad_w, 0, pad_h), "reflect") if pad_h or pad_w else x


class DropPath(nn.Module):
    """Stochastic depth: zero the residual branch of a whole sample with probability p, scale kept ones by 1/(1-p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return noise.stochastic_depth(x, self.p) if self.training else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path(p: float) -> nn.Module:
    return DropPath(p) if p > 0 else nn.Identity()


class Mlp(nn.Module):
    """fc1 - GELU - dropout - fc2 - dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = noise.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PatchEmbed(nn.Module):
    """Image (b, c, h, w) -> tokens (b, h*w, c), then an optional LayerNorm (patch size 1: no parameters else)."""

    def __init__(self, dim: int, norm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


def to_image(tokens: torch.Tensor, size: tuple[int, int], contiguous: bool = False) -> torch.Tensor:
    """Tokens (b, h*w, c) -> image (b, c, h, w): a strided view (SwinIR) or a contiguous copy (HAT)."""
    x = tokens.transpose(1, 2)
    return (x.contiguous() if contiguous else x).view(tokens.shape[0], tokens.shape[2], *size)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learnt bias per relative position and head.

    SwinIR keeps the relative position index in each block (``own_index``, a state_dict buffer);
    HAT passes one shared index to every block."""

    def __init__(self, dim: int, window_size: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 own_index: bool = True):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        if own_index:
            self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = noise.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = noise.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, mask: torch.Tensor | None = None, rpi: torch.Tensor | None = None):
        """x: (b * windows, n, c); mask: (windows, n, n) or None; rpi: the index when not ``own_index``."""
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)

        rpi = self.relative_position_index if rpi is None else rpi
        bias = self.relative_position_bias_table[rpi.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b_ // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(self.softmax(attn))

        x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"
