"""What SwinIR and HAT share: the window-attention SR network around their residual groups.

    x -> reflect-pad to a multiple of the window -> (x - mean) * img_range
      -> conv_first [first] = f
      -> tokens: patch_embed (flatten + LayerNorm) -> residual group k [b<k>], k = 1..n -> LayerNorm
      -> image: conv_after_body + f (the long skip)
      -> reconstruction [up<i>, hr, last] -> / img_range + mean -> crop to scale x input size

A subclass builds ``self.layers`` (its residual groups, each with an ``inblock<k>`` ``site`` on
its residual branch) and its reconstruction tail between ``_build_head`` and ``_build_body_end``,
and says what the groups take besides the tokens (``group_inputs``). Sites see image-layout
features (b, c, h, w) everywhere, also between groups, so channel dropout and the
interpretation tools mean the same as on the CNNs.

Test-time padding: the input is reflect-padded at the bottom and right to a multiple of
``window_size`` and the output cropped back to scale x size, as SwinIR's and HAT's test code
do; for inputs that already are multiples (training patches) this is a no-op.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from srcore import noise

from .backbone import DIV2K_RGB_MEAN, Backbone
from .swinir_blocks import residual_conv
from .upsample import Upsample, num_stages
from .window_attention import PatchEmbed, pad_to_window, to_image, to_tokens, trunc_normal_

NUM_FEAT = 64  # width of the reconstruction convs (fixed in SwinIR / HAT)


def _check_fraction(key: str, value) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"backbone.{key}={value!r} must be in [0, 1)")


class WindowTransformerSR(Backbone):
    """Base of SwinIR and HAT (not registered itself)."""

    BLOCKS = "layers"
    SCALES = (2, 3, 4, 8)
    UNEMBED_CONTIGUOUS = False  # HAT copies the tokens to a contiguous image; SwinIR views them

    @classmethod
    def site_names(cls, depths, upscale: int, upsampler: str = "pixelshuffle") -> tuple[str, ...]:
        groups = [s for k in range(1, len(depths) + 1) for s in (f"inblock{k}", f"b{k}")]
        tail = {"pixelshuffle": [*(f"up{i}" for i in range(1, num_stages(upscale) + 1)), "last"],
                "nearest+conv": ["up1", "up2", "hr", "last"],
                "pixelshuffledirect": ["last"]}[upsampler]
        return ("first", *groups, *tail)

    @classmethod
    def check_settings(cls, args: dict) -> None:
        depths, heads, ws = args["depths"], args["num_heads"], args["window_size"]
        if len(heads) != len(depths):
            raise ValueError(f"backbone.num_heads={list(heads)!r} must have one entry per group of "
                             f"backbone.depths={list(depths)!r}")
        if any(args["embed_dim"] % h for h in heads):
            raise ValueError(f"backbone.embed_dim={args['embed_dim']!r} must be divisible by every "
                             f"backbone.num_heads ({list(heads)!r})")
        if args["img_size"] % ws or args["img_size"] <= ws:
            raise ValueError(f"backbone.img_size={args['img_size']!r} must be a multiple of backbone.window_size="
                             f"{ws} larger than it (the shifted windows' mask is built for it)")
        for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            _check_fraction(key, args[key])
        for key in ("mlp_ratio", "img_range"):
            if not args[key] > 0:
                raise ValueError(f"backbone.{key}={args[key]!r} must be > 0")

    @classmethod
    def settings_from_weights(cls, state) -> dict:
        """Sizes, depths, heads, window, MLP ratio and residual conv, read off official weights."""
        groups = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
        block0 = "layers.{}.residual_group.blocks.0."
        embed_dim = state["conv_first.weight"].shape[0]
        table_rows = state[block0.format(0) + "attn.relative_position_bias_table"].shape[0]  # (2 ws - 1)^2
        conv = ("1conv" if "layers.0.conv.weight" in state else "3conv" if "layers.0.conv.0.weight" in state
                else "identity")
        return {"in_chans": state["conv_first.weight"].shape[1], "embed_dim": embed_dim,
                "depths": [len({k.split(".")[4] for k in state if k.startswith(f"layers.{n}.residual_group.blocks.")})
                           for n in groups],
                "num_heads": [state[block0.format(n) + "attn.relative_position_bias_table"].shape[1] for n in groups],
                "window_size": (math.isqrt(table_rows) + 1) // 2,
                "mlp_ratio": state[block0.format(0) + "mlp.fc1.weight"].shape[0] / embed_dim,
                "resi_connection": conv}

    # -- construction, in the official order (a seed gives the official initial weights) ------

    def _build_head(self, in_chans: int, embed_dim: int, img_range: float, drop_rate: float, window_size: int,
                    upscale: int) -> None:
        self.check_scale(upscale)
        self.upscale, self.window_size, self.img_range = upscale, window_size, img_range
        mean = torch.tensor(DIV2K_RGB_MEAN) if in_chans == 3 else torch.zeros(1)
        # not persistent: official weights have no "mean" entry
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_drop = noise.Dropout(p=drop_rate)

    def _build_body_end(self, embed_dim: int, resi_connection: str) -> None:
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)

    def _build_conv_before_upsample(self, embed_dim: int) -> None:
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, NUM_FEAT, 3, 1, 1), nn.LeakyReLU(inplace=True))

    def _build_pixelshuffle_tail(self, embed_dim: int, upscale: int, out_chans: int) -> None:
        self._build_conv_before_upsample(embed_dim)
        self.upsample = Upsample(upscale, NUM_FEAT)
        self.conv_last = nn.Conv2d(NUM_FEAT, out_chans, 3, 1, 1)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # -- forward ----------------------------------------------------------------------------

    def group_inputs(self, x_size: tuple[int, int], device) -> dict:
        """What every residual group takes besides the tokens and the size."""
        return {}

    def forward_features(self, x):
        x_size = (x.shape[2], x.shape[3])
        inputs = self.group_inputs(x_size, x.device)
        x = self.pos_drop(self.patch_embed(x))
        for k, layer in enumerate(self.layers, start=1):
            x = to_tokens(self.sites[f"b{k}"](to_image(layer(x, x_size, **inputs), x_size)))
        return to_image(self.norm(x), x_size, self.UNEMBED_CONTIGUOUS)

    def reconstruct(self, x):
        """Features at LR -> image (the upsampler's tail, with its up<i> and last sites)."""
        s = self.sites
        x = self.conv_before_upsample(x)
        for i, (conv, shuffle) in enumerate(self.upsample.stages(), start=1):
            x = s[f"up{i}"](shuffle(conv(x)))
        return self.conv_last(s["last"](x))

    def forward(self, x):
        h, w = x.shape[-2:]
        x = (pad_to_window(x, self.window_size) - self.mean) * self.img_range
        x = self.sites["first"](self.conv_first(x))
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.reconstruct(x) / self.img_range + self.mean
        return x[..., :h * self.upscale, :w * self.upscale]
