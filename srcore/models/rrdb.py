"""RRDBNet (ESRGAN's generator) = BasicSR's ``RRDBNet``, with regulariser sites.

Parameter names, construction order and initialisation follow BasicSR (only the dense-block
convs get the 0.1-scaled kaiming init; the rest keep PyTorch's default), so official
BasicSR / Real-ESRGAN checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..regularizers.sites import site_names
from .backbone import Backbone, register_backbone
from .blocks import default_init_weights


class ResidualDenseBlock(nn.Module):
    """Five densely connected convs; the output is scaled by 0.2 and added to the input. ``mid``
    (the RRDB's mid site, given to its first dense block only) acts on conv1's output."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        default_init_weights([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], 0.1)

    def forward(self, x, mid: nn.Module | None = None):
        x1 = self.conv1(x)
        x1 = self.lrelu(x1 if mid is None else mid(x1))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x  # residual scaling 0.2 (ESRGAN) keeps the deep trunk stable


class RRDB(nn.Module):
    """Residual in Residual Dense Block: rdb1-rdb2-rdb3-[site]-(*0.2)-+ (the inblock site sits
    on the residual branch, before the scaling and the add). The mid site (handed to
    ``forward`` by the backbone) follows the branch's first conv, rdb1.conv1, before its
    LeakyReLU: the place "after the first conv" has in SRResNet's block."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.site = nn.Identity()  # parameter-free: keys stay BasicSR's

    def forward(self, x, mid: nn.Module | None = None):
        out = self.rdb3(self.rdb2(self.rdb1(x, mid)))
        return self.site(out) * 0.2 + x


@register_backbone("rrdb")
class RRDBNet(Backbone):
    """ESRGAN generator (BasicSR ``RRDBNet``), x4 / x2 / x1 (x2 and x1 pixel-unshuffle the input first).

    Sites: first, mid<k>, inblock<k>, b<k> (k = 1..num_block), up1, up2, hr, last.
    """

    SCALES = (1, 2, 4)

    @classmethod
    def site_names(cls, num_block: int, upscale: int) -> tuple[str, ...]:
        return site_names(num_block, num_up=2, mid=True)  # always the x4 tail

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32, upscale: int = 4):
        super().__init__()
        self.check_scale(upscale)
        self.upscale = upscale

        # x2 / x1: trade resolution for channels so the fixed x4 tail gives the right size
        num_in_ch *= {4: 1, 2: 4, 1: 16}[upscale]
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self.init_sites(num_block, upscale)

    def forward(self, x):
        s = self.sites
        if self.upscale != 4:
            x = F.pixel_unshuffle(x, 4 // self.upscale)  # same channel order as BasicSR's pixel_unshuffle
        feat = s["first"](self.conv_first(x))
        body = feat
        for k, block in enumerate(self.body, start=1):
            body = s[f"b{k}"](block(body, s[f"mid{k}"]))
        feat = feat + self.conv_body(body)  # long skip over the whole trunk

        feat = s["up1"](self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest"))))
        feat = s["up2"](self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest"))))
        feat = s["last"](self.lrelu(self.conv_hr(s["hr"](feat))))
        return self.conv_last(feat)
