"""SwinIR = BasicSR's ``SwinIR`` (Liang et al. 2021), with regulariser sites.

Parameter names follow BasicSR, so official weights load with ``strict=True`` (classical and
lightweight: ``params``; real-world: ``params_ema``) — built with the checkpoint's ``img_size``,
because the shifted blocks' ``attn_mask`` buffers are sized by it (48 or 64 in the releases;
``settings_from_weights`` reads it off a file). Published x4 variants (conf/backbone/):
    swinir       classical M: embed_dim 180, depths [6]*6, num_heads [6]*6, window 8, mlp_ratio 2,
                 upsampler pixelshuffle (11,900,199 parameters)
    swinir_s     lightweight: embed_dim 60, depths [6]*4, num_heads [6]*4, pixelshuffledirect (929,628)
    swinir_real  real-world M: as classical, upsampler nearest+conv (11,715,559)
Stochastic depth is SwinIR's own: ``drop_path_rate`` (0.1 as published, linear over all blocks
from 0; 0 turns it off).

Sites (forward order; all see image-layout features):
    first       after conv_first (the trunk's long skip starts from it)
    inblock<k>  in RSTB k, on its residual branch after its conv, before the group's residual add
    b<k>        after RSTB k
    then per upsampler (where REGULARIZERS.md puts "last-conv"):
    pixelshuffle        up<i> after each pixel-shuffle stage (x4: two); last = input of conv_last,
                        i.e. the upsampler's output (64 channels at HR, no activation)
    nearest+conv        up1, up2 after each lrelu(conv_up(nearest x2)); hr = input of conv_hr;
                        last = lrelu(conv_hr(.)), the input of conv_last, as in RRDB
    pixelshuffledirect  last = input of upsample.0 (the LR features: there is no conv_last)
``middle`` is b<(groups + 1) // 2> (b3 of 6); ``all``/``half``/``quarter`` the inblock sites of
the last 100 / 50 / 25 % of the groups.
"""

from __future__ import annotations

import math

from torch import nn
from torch.nn import functional as F

from .backbone import register_backbone
from .swinir_blocks import RSTB
from .window_attention import drop_path_rates
from .window_transformer import NUM_FEAT, WindowTransformerSR

UPSAMPLERS = ("pixelshuffle", "nearest+conv", "pixelshuffledirect")


def _check_upsampler(upsampler: str, upscale: int) -> None:
    if upsampler not in UPSAMPLERS:
        raise ValueError(f"backbone.upsampler={upsampler!r} is unknown; allowed: {', '.join(UPSAMPLERS)}")
    if upsampler == "nearest+conv" and upscale != 4:
        raise ValueError(f"scale={upscale!r} is not supported by swinir's nearest+conv upsampler; allowed: (4,)")


@register_backbone("swinir")
class SwinIR(WindowTransformerSR):
    """SwinIR for SR (BasicSR ``SwinIR``), x2 / x3 / x4 / x8 (nearest+conv: x4 only)."""

    @classmethod
    def check_settings(cls, args: dict) -> None:
        super().check_settings(args)
        _check_upsampler(args["upsampler"], args["upscale"])
        if args["resi_connection"] not in ("1conv", "3conv"):
            raise ValueError(f"backbone.resi_connection={args['resi_connection']!r} is unknown; allowed: 1conv, 3conv")

    @classmethod
    def settings_from_weights(cls, state) -> dict:
        settings = super().settings_from_weights(state)
        settings["upsampler"] = ("nearest+conv" if "conv_up1.weight" in state else
                                 "pixelshuffle" if "conv_before_upsample.0.weight" in state else "pixelshuffledirect")
        masks = [v for k, v in state.items() if k.endswith(".attn_mask")]
        if masks:  # (img_size / window_size)^2 windows
            settings["img_size"] = settings["window_size"] * math.isqrt(masks[0].shape[0])
        return settings

    def __init__(self, img_size: int = 64, in_chans: int = 3, embed_dim: int = 180, depths: tuple[int, ...] = (6,) * 6,
                 num_heads: tuple[int, ...] = (6,) * 6, window_size: int = 8, mlp_ratio: float = 2.0,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 upscale: int = 4, img_range: float = 1.0, upsampler: str = "pixelshuffle",
                 resi_connection: str = "1conv"):
        super().__init__()
        self.upsampler = upsampler
        self._build_head(in_chans, embed_dim, img_range, drop_rate, window_size, upscale)
        rates = drop_path_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList(
            RSTB(embed_dim, (img_size, img_size), depth, heads, window_size, mlp_ratio, drop_rate, attn_drop_rate,
                 rates[i], resi_connection) for i, (depth, heads) in enumerate(zip(depths, num_heads)))
        self._build_body_end(embed_dim, resi_connection)
        self._build_tail(embed_dim, upscale, in_chans)
        self.apply(self._init_weights)
        self.init_sites(depths, upscale, upsampler)

    def _build_tail(self, embed_dim: int, upscale: int, out_chans: int) -> None:
        _check_upsampler(self.upsampler, upscale)
        if self.upsampler == "pixelshuffle":
            self._build_pixelshuffle_tail(embed_dim, upscale, out_chans)
        elif self.upsampler == "pixelshuffledirect":  # lightweight: one conv + shuffle straight to RGB
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, upscale ** 2 * out_chans, 3, 1, 1),
                                          nn.PixelShuffle(upscale))
        else:  # nearest+conv, real-world: fewer checkerboard artefacts
            self._build_conv_before_upsample(embed_dim)
            self.conv_up1 = nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, 1, 1)
            self.conv_hr = nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, 1, 1)
            self.conv_last = nn.Conv2d(NUM_FEAT, out_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def reconstruct(self, x):
        s = self.sites
        if self.upsampler == "pixelshuffle":
            return super().reconstruct(x)
        if self.upsampler == "pixelshuffledirect":
            return self.upsample(s["last"](x))
        x = self.conv_before_upsample(x)
        x = s["up1"](self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest"))))
        x = s["up2"](self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest"))))
        return self.conv_last(s["last"](self.lrelu(self.conv_hr(s["hr"](x)))))
