"""SRResNet = BasicSR's ``MSRResNet`` (residual blocks without BN), with dropout sites.

Parameter names, construction order and initialisation follow BasicSR, so official
BasicSR checkpoints load without renaming (and a fixed seed gives the same initial weights).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn import init

from ..dropout import DropoutSitesMixin


@torch.no_grad()
def default_init_weights(modules, scale: float = 1.0, bias_fill: float = 0.0) -> None:
    """BasicSR's init: kaiming_normal_, weights scaled by ``scale`` (small residuals), constant bias."""
    for module in modules if isinstance(modules, (list, tuple)) else [modules]:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init.kaiming_normal_(m.weight)
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.fill_(bias_fill)


class ResidualBlockNoBN(nn.Module):
    """---conv-ReLU-conv-[site]-(*res_scale)-+---   (BasicSR's ResidualBlockNoBN plus an inblock site)
       |______________________________________|
    """

    def __init__(self, num_feat: int = 64, res_scale: float = 1.0, site: nn.Module | None = None):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        # Parameter-free, and not in an nn.Sequential, so the conv keys keep their names.
        self.site = site if site is not None else nn.Identity()
        default_init_weights([self.conv1, self.conv2], 0.1)

    def forward(self, x):
        return x + self.site(self.conv2(self.relu(self.conv1(x)))) * self.res_scale


class SRResNet(DropoutSitesMixin, nn.Module):
    """Modified SRResNet (BasicSR ``MSRResNet``), x2 / x3 / x4.

    Dropout sites (see ``srcore.dropout``): first, inblock<k>, b<k> (k = 1..num_block), up1, up2
    (x4 only), hr, last.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
                 upscale: int = 4, dropout_position="none", dropout_p: float = 0.0, dropout_kind: str = "channel"):
        super().__init__()
        if upscale not in (2, 3, 4):
            raise ValueError(f"SRResNet upscale={upscale!r} is not supported; allowed: 2, 3, 4")
        self.upscale = upscale
        self._init_dropout(dropout_position, dropout_p, dropout_kind, num_block, num_up=2 if upscale == 4 else 1)

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat, site=self.make_site(f"inblock{k}"))
                                    for k in range(1, num_block + 1)))
        # upsampling: one x2 / x3 pixel-shuffle stage, or two x2 stages for x4
        if upscale == 4:
            self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        else:
            self.upconv1 = nn.Conv2d(num_feat, num_feat * upscale * upscale, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)
        self.sites = self.make_outer_sites()

        # same order as BasicSR, so a given seed yields the same weights
        default_init_weights([self.conv_first, self.upconv1, self.conv_hr, self.conv_last], 0.1)
        if upscale == 4:
            default_init_weights(self.upconv2, 0.1)

    def forward(self, x):
        s = self.sites
        out = s["first"](self.lrelu(self.conv_first(x)))
        for k, block in enumerate(self.body, start=1):
            out = s[f"b{k}"](block(out))

        out = s["up1"](self.lrelu(self.pixel_shuffle(self.upconv1(out))))
        if self.upscale == 4:
            out = s["up2"](self.lrelu(self.pixel_shuffle(self.upconv2(out))))

        out = s["last"](self.lrelu(self.conv_hr(s["hr"](out))))
        out = self.conv_last(out)
        # global residual: the network learns the difference to a bilinear upsampling
        return out + F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
