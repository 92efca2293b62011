"""EDSR = BasicSR's ``EDSR`` (Lim et al. 2017, residual blocks without BN), with regulariser sites.

Parameter names follow BasicSR (``conv_first``, ``body.{i}.conv1/conv2``, ``conv_after_body``,
``upsample.0``/``upsample.2``, ``conv_last``), so official weights (``params``) load with
``strict=True``. Published x4 sizes: EDSR-M num_feat 64, num_block 16, res_scale 1
(1,517,571 parameters); EDSR-L num_feat 256, num_block 32, res_scale 0.1 (43,089,923).

Sites (forward order), as SRResNet's:
    first          after conv_first (the trunk's long skip starts from it)
    mid<k>         in residual block k, on conv1's output before the ReLU (Adaptive Dropout's)
    inblock<k>     in residual block k, on its residual branch before the scaling and add
    b<k>           after residual block k
    up<i>          after upsampling stage i (x4: two x2 pixel-shuffle stages; x2, x3: one)
    last           input of conv_last (the upsampler's output: EDSR has no conv_hr, so no ``hr``)
``middle`` is b<(num_block + 1) // 2>; ``all``/``half``/``quarter`` the inblock sites of the
last 100 / 50 / 25 % of the blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..regularizers.sites import site_names
from .backbone import DIV2K_RGB_MEAN, Backbone, register_backbone
from .blocks import ResidualBlockNoBN
from .upsample import Upsample, num_stages


def _block(num_feat: int, res_scale: float) -> ResidualBlockNoBN:
    """BasicSR's EDSR keeps PyTorch's default init in its blocks (``pytorch_init=True``)."""
    block = ResidualBlockNoBN(num_feat, res_scale)
    block.conv1.reset_parameters()
    block.conv2.reset_parameters()
    return block


@register_backbone("edsr")
class EDSR(Backbone):
    """EDSR (BasicSR ``EDSR``), x2 / x3 / x4 / x8: conv_first -> residual blocks -> conv_after_body
    (+ long skip) -> pixel-shuffle upsampler -> conv_last, on inputs normalised by ``rgb_mean``
    and ``img_range``."""

    SCALES = (2, 3, 4, 8)

    @classmethod
    def site_names(cls, num_block: int, upscale: int) -> tuple[str, ...]:
        return tuple(s for s in site_names(num_block, num_up=num_stages(upscale), mid=True) if s != "hr")

    @classmethod
    def check_settings(cls, args: dict) -> None:
        if not args["img_range"] > 0:
            raise ValueError(f"backbone.img_range={args['img_range']!r} must be > 0")
        if not len(args["rgb_mean"]) == args["num_in_ch"] == args["num_out_ch"]:
            raise ValueError(f"backbone.rgb_mean={list(args['rgb_mean'])!r} must have one value per channel "
                             f"(num_in_ch={args['num_in_ch']}, num_out_ch={args['num_out_ch']})")

    @classmethod
    def settings_from_weights(cls, state) -> dict:
        # res_scale is not in the weights: EDSR-L (res_scale 0.1) needs it given explicitly
        return {"num_in_ch": state["conv_first.weight"].shape[1], "num_out_ch": state["conv_last.weight"].shape[0],
                "num_feat": state["conv_first.weight"].shape[0],
                "num_block": len({k.split(".")[1] for k in state if k.startswith("body.")})}

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
                 upscale: int = 4, res_scale: float = 1.0, img_range: float = 255.0,
                 rgb_mean: tuple[float, ...] = DIV2K_RGB_MEAN):
        super().__init__()
        self.check_scale(upscale)
        self.img_range = img_range
        # not persistent: official weights have no "mean" entry
        self.register_buffer("mean", torch.tensor(rgb_mean).view(1, -1, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(_block(num_feat, res_scale) for _ in range(num_block)))
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.init_sites(num_block, upscale)

    def forward(self, x):
        s = self.sites
        x = (x - self.mean) * self.img_range
        x = s["first"](self.conv_first(x))
        res = x
        for k, block in enumerate(self.body, start=1):
            res = s[f"b{k}"](block(res, s[f"mid{k}"]))
        res = self.conv_after_body(res) + x

        for i, (conv, shuffle) in enumerate(self.upsample.stages(), start=1):
            res = s[f"up{i}"](shuffle(conv(res)))
        x = self.conv_last(s["last"](res))
        return x / self.img_range + self.mean
