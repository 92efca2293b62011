"""HAT's building blocks (Chen et al. 2023, XPixelGroup/HAT ``hat_arch``): the Hybrid Attention
Block (window attention + a channel-attention conv branch), the Overlapping Cross-Attention Block
and the Residual Hybrid Attention Group (RHAG).

Module names are HAT's, so the state_dict keys are ``layers.{n}.residual_group.blocks.{m}.{norm1,
attn.relative_position_bias_table, attn.qkv, attn.proj, conv_block.cab.{0,2,3.attention.1,
3.attention.3}, norm2, mlp.fc1, mlp.fc2}``, ``layers.{n}.residual_group.overlap_attn.{norm1, qkv,
relative_position_bias_table, proj, norm2, mlp.fc1, mlp.fc2}`` and ``layers.{n}.conv``; the
relative position indices are two buffers of the network, shared by all blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from .swinir_blocks import residual_conv
from .window_attention import (Mlp, WindowAttention, drop_path, to_image, to_tokens, trunc_normal_,
                               window_partition, window_reverse)


def overlapping_relative_position_index(window_size: int, overlap_window: int) -> torch.Tensor:
    """(ws*ws, ows*ows) index into the (ws + ows - 1)^2-row bias table: query window vs. its
    enlarged key window."""
    def flat_coords(size):
        return torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).flatten(1)

    rel = flat_coords(overlap_window)[:, None, :] - flat_coords(window_size)[:, :, None]
    rel = rel.permute(1, 2, 0).contiguous() + (window_size - overlap_window + 1)
    return rel[:, :, 0] * (window_size + overlap_window - 1) + rel[:, :, 1]


class ChannelAttention(nn.Module):
    """RCAN's channel attention: scale each channel by a gate computed from the pooled features."""

    def __init__(self, num_feat: int, squeeze_factor: int):
        super().__init__()
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
                                       nn.ReLU(inplace=True), nn.Conv2d(num_feat // squeeze_factor, num_feat, 1),
                                       nn.Sigmoid())

    def forward(self, x):
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block: conv (compress) - GELU - conv - channel attention."""

    def __init__(self, num_feat: int, compress_ratio: int, squeeze_factor: int):
        super().__init__()
        self.cab = nn.Sequential(nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
                                 nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1),
                                 ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x):
        return self.cab(x)


class HAB(nn.Module):
    """Hybrid attention block: x + DropPath(W-MSA(LN x)) + conv_scale * CAB(LN x), then the MLP half."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, compress_ratio: int,
                 squeeze_factor: int, conv_scale: float, mlp_ratio: float, drop: float, attn_drop: float,
                 drop_path_rate: float):
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, attn_drop, drop, own_index=False)
        self.conv_scale = conv_scale
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = drop_path(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, x_size, rpi_sa, attn_mask):
        h, w = x_size
        b, _, c = x.shape
        ws, shift = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        conv_x = self.conv_block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous().view(b, h * w, c)
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, ws).view(-1, ws * ws, c)
        windows = self.attn(windows, mask=attn_mask if shift > 0 else None, rpi=rpi_sa).view(-1, ws, ws, c)
        attn_x = window_reverse(windows, ws, h, w)
        if shift > 0:
            attn_x = torch.roll(attn_x, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + self.drop_path(attn_x.view(b, h * w, c)) + conv_x * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OCAB(nn.Module):
    """Overlapping cross-attention: queries from each window attend to keys/values from the window
    enlarged by ``overlap_ratio`` (unfolded with padding), then a residual MLP."""

    def __init__(self, dim: int, window_size: int, overlap_ratio: float, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        ows = self.overlap_win_size
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.unfold = nn.Unfold(kernel_size=(ows, ows), stride=window_size, padding=(ows - window_size) // 2)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((window_size + ows - 1) ** 2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _heads(self, windows: torch.Tensor) -> torch.Tensor:
        """(b*, n, c) -> (b*, heads, n, c / heads)."""
        return windows.reshape(windows.shape[0], windows.shape[1], self.num_heads, -1).permute(0, 2, 1, 3)

    def forward(self, x, x_size, rpi):
        h, w = x_size
        b, _, c = x.shape
        ws, ows = self.window_size, self.overlap_win_size
        shortcut = x
        qkv = self.qkv(self.norm1(x).view(b, h, w, c)).reshape(b, h, w, 3, c).permute(3, 0, 4, 1, 2)
        q_windows = window_partition(qkv[0].permute(0, 2, 3, 1), ws).view(-1, ws * ws, c)
        kv_windows = self.unfold(torch.cat((qkv[1], qkv[2]), dim=1))  # (b, 2c * ows * ows, windows)
        nw = kv_windows.shape[-1]
        kv_windows = (kv_windows.view(b, 2, c, ows, ows, nw).permute(1, 0, 5, 3, 4, 2)
                      .reshape(2, b * nw, ows * ows, c).contiguous())

        attn = (self._heads(q_windows) * self.scale) @ self._heads(kv_windows[0]).transpose(-2, -1)
        bias = self.relative_position_bias_table[rpi.view(-1)].view(ws * ws, ows * ows, -1)
        attn = self.softmax(attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0))
        windows = (attn @ self._heads(kv_windows[1])).transpose(1, 2).reshape(-1, ws * ws, self.dim)

        x = window_reverse(windows.view(-1, ws, ws, self.dim), ws, h, w).view(b, h * w, self.dim)
        x = self.proj(x) + shortcut
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    """``depth`` hybrid attention blocks (every second on shifted windows), then one OCAB."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, compress_ratio: int,
                 squeeze_factor: int, conv_scale: float, overlap_ratio: float, mlp_ratio: float, drop: float,
                 attn_drop: float, drop_path_rates: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList(
            HAB(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, compress_ratio, squeeze_factor,
                conv_scale, mlp_ratio, drop, attn_drop, drop_path_rates[i]) for i in range(depth))
        self.overlap_attn = OCAB(dim, window_size, overlap_ratio, num_heads, mlp_ratio)

    def forward(self, x, x_size, attn_mask, rpi_sa, rpi_oca):
        for block in self.blocks:
            x = block(x, x_size, rpi_sa, attn_mask)
        return self.overlap_attn(x, x_size, rpi_oca)


class RHAG(nn.Module):
    """Residual hybrid attention group: blocks + OCAB - conv - [site] - + input (on tokens).

    ``site`` is the group's ``inblock<k>`` site: on the residual branch in image layout, after
    the conv, before the add (parameter-free, so the keys stay HAT's)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, compress_ratio: int,
                 squeeze_factor: int, conv_scale: float, overlap_ratio: float, mlp_ratio: float, drop: float,
                 attn_drop: float, drop_path_rates: list[float], resi_connection: str):
        super().__init__()
        self.residual_group = AttenBlocks(dim, depth, num_heads, window_size, compress_ratio, squeeze_factor,
                                          conv_scale, overlap_ratio, mlp_ratio, drop, attn_drop, drop_path_rates)
        self.conv = residual_conv(dim, resi_connection)
        self.site = nn.Identity()

    def forward(self, x, x_size, **inputs):
        group = self.residual_group(x, x_size, **inputs)
        return to_tokens(self.site(self.conv(to_image(group, x_size, contiguous=True)))) + x
