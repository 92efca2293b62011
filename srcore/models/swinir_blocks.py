"""SwinIR's building blocks (Liang et al. 2021, BasicSR ``swinir_arch``): the Swin Transformer
block and the Residual Swin Transformer Block (RSTB) = a group of them + a conv + a residual add.

Module names are BasicSR's, so the state_dict keys are
``layers.{n}.residual_group.blocks.{m}.{norm1, attn.relative_position_bias_table,
attn.relative_position_index, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`` (+ ``attn_mask``
in the shifted blocks) and ``layers.{n}.conv``.
"""

from __future__ import annotations

import torch
from torch import nn

from .window_attention import (Mlp, WindowAttention, drop_path, shifted_window_mask, to_image, to_tokens,
                               window_partition, window_reverse)

RESIDUAL_CONVS = ("1conv", "3conv", "identity")


def residual_conv(dim: int, kind: str) -> nn.Module:
    """The conv closing a residual group (and the trunk): '1conv' a 3x3 conv; '3conv' a cheaper
    3x3-1x1-3x3 bottleneck (SwinIR-L); 'identity' none (an HAT option)."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim, 3, 1, 1))
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"resi_connection={kind!r} is unknown; allowed: {', '.join(RESIDUAL_CONVS)}")


class SwinTransformerBlock(nn.Module):
    """x + DropPath(W-MSA(LN(x))), then x + DropPath(MLP(LN(x))); shifted windows when shift_size > 0.

    The mask of the shifted windows is a buffer for ``input_resolution`` (img_size: so official
    weights carry it and strict loading needs their img_size) and computed for any other size."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, mlp_ratio: float, drop: float, attn_drop: float, drop_path_rate: float):
        super().__init__()
        self.input_resolution = input_resolution
        if min(input_resolution) <= window_size:  # one window covers the image: nothing to shift
            shift_size, window_size = 0, min(input_resolution)
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, attn_drop, drop)
        self.drop_path = drop_path(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = shifted_window_mask(*input_resolution, window_size, shift_size) if shift_size > 0 else None
        self.register_buffer("attn_mask", mask)

    def _mask(self, x_size: tuple[int, int], device) -> torch.Tensor | None:
        if self.shift_size == 0:
            return None
        if x_size == self.input_resolution:
            return self.attn_mask
        return shifted_window_mask(*x_size, self.window_size, self.shift_size).to(device)

    def forward(self, x, x_size: tuple[int, int]):
        h, w = x_size
        b, _, c = x.shape
        ws, shift = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, ws).view(-1, ws * ws, c)
        windows = self.attn(windows, mask=self._mask(x_size, x.device)).view(-1, ws, ws, c)
        x = window_reverse(windows, ws, h, w)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + self.drop_path(x.view(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinLayer(nn.Module):
    """``depth`` Swin Transformer blocks, every second one on shifted windows (BasicSR ``BasicLayer``)."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, drop: float, attn_drop: float, drop_path_rates: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio, drop, attn_drop, drop_path_rates[i]) for i in range(depth))

    def forward(self, x, x_size):
        for block in self.blocks:
            x = block(x, x_size)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: blocks - conv - [site] - + input (on tokens).

    ``site`` is the group's ``inblock<k>`` site: on the residual branch in image layout, after
    the conv, before the add (parameter-free, so the keys stay BasicSR's)."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, drop: float, attn_drop: float, drop_path_rates: list[float], resi_connection: str):
        super().__init__()
        self.residual_group = SwinLayer(dim, input_resolution, depth, num_heads, window_size, mlp_ratio, drop,
                                        attn_drop, drop_path_rates)
        self.conv = residual_conv(dim, resi_connection)
        self.site = nn.Identity()

    def forward(self, x, x_size):
        return to_tokens(self.site(self.conv(to_image(self.residual_group(x, x_size), x_size)))) + x
