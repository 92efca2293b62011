"""SRResNet = BasicSR's ``MSRResNet`` (residual blocks without BN), with regulariser sites.

Parameter names, construction order and initialisation follow BasicSR, so official
BasicSR checkpoints load without renaming (and a fixed seed gives the same initial weights).
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from ..regularizers.sites import site_names
from .backbone import Backbone, register_backbone
from .blocks import ResidualBlockNoBN, default_init_weights


@register_backbone("srresnet")
class SRResNet(Backbone):
    """Modified SRResNet (BasicSR ``MSRResNet``), x2 / x3 / x4.

    Sites: first, mid<k>, inblock<k>, b<k> (k = 1..num_block), up1, up2 (x4 only), hr, last.
    """

    SCALES = (2, 3, 4)

    @classmethod
    def site_names(cls, num_block: int, upscale: int) -> tuple[str, ...]:
        return site_names(num_block, num_up=2 if upscale == 4 else 1, mid=True)  # x4: two x2 pixel-shuffle stages

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
                 upscale: int = 4):
        super().__init__()
        self.check_scale(upscale)
        self.upscale = upscale

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat) for _ in range(num_block)))
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
        self.init_sites(num_block, upscale)

        # same order as BasicSR, so a given seed yields the same weights
        default_init_weights([self.conv_first, self.upconv1, self.conv_hr, self.conv_last], 0.1)
        if upscale == 4:
            default_init_weights(self.upconv2, 0.1)

    def forward(self, x):
        s = self.sites
        out = s["first"](self.lrelu(self.conv_first(x)))
        for k, block in enumerate(self.body, start=1):
            out = s[f"b{k}"](block(out, s[f"mid{k}"]))

        out = s["up1"](self.lrelu(self.pixel_shuffle(self.upconv1(out))))
        if self.upscale == 4:
            out = s["up2"](self.lrelu(self.pixel_shuffle(self.upconv2(out))))

        out = s["last"](self.lrelu(self.conv_hr(s["hr"](out))))
        out = self.conv_last(out)
        # global residual: the network learns the difference to a bilinear upsampling
        return out + F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
