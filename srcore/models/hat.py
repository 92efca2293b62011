"""HAT = XPixelGroup/HAT's ``HAT`` (Chen et al. 2023, "Activating More Pixels"), with regulariser sites.

SwinIR's design with hybrid attention blocks (window attention + a channel-attention conv
branch scaled by ``conv_scale``) and an overlapping cross-attention block closing every group.
Parameter names follow the official code, so its weights (``params_ema``) load with
``strict=True``; nothing depends on ``img_size`` (the masks are computed per forward). Published
x4 variants (conf/backbone/): ``hat`` embed_dim 180, depths [6]*6, num_heads [6]*6, window 16,
compress_ratio 3, squeeze_factor 30 (20,772,507 parameters); ``hat_s`` embed_dim 144,
compress_ratio 24, squeeze_factor 24 (9,621,183). Stochastic depth is HAT's own:
``drop_path_rate`` (0.1 as published, linear over all blocks from 0; 0 turns it off).

Sites (forward order; all see image-layout features):
    first       after conv_first (the trunk's long skip starts from it)
    inblock<k>  in RHAG k, on its residual branch after its conv, before the group's residual add
    b<k>        after RHAG k
    up<i>       after each pixel-shuffle stage of the upsampler (x4: two)
    last        input of conv_last = the upsampler's output (64 channels at HR, no activation)
``middle`` is b<(groups + 1) // 2> (b3 of 6); ``all``/``half``/``quarter`` the inblock sites of
the last 100 / 50 / 25 % of the groups.
"""

from __future__ import annotations

from torch import nn

from .backbone import register_backbone
from .hat_blocks import RHAG, overlapping_relative_position_index
from .window_attention import drop_path_rates, relative_position_index, shifted_window_mask
from .window_transformer import WindowTransformerSR


@register_backbone("hat")
class HAT(WindowTransformerSR):
    """HAT for SR (upsampler pixelshuffle), x2 / x3 / x4 / x8."""

    UNEMBED_CONTIGUOUS = True

    @classmethod
    def check_settings(cls, args: dict) -> None:
        super().check_settings(args)
        for key in ("compress_ratio", "squeeze_factor"):  # the conv branch narrows to embed_dim // these
            if args[key] > args["embed_dim"]:
                raise ValueError(f"backbone.{key}={args[key]!r} must be <= backbone.embed_dim={args['embed_dim']}")
        overlap = args["overlap_ratio"] * args["window_size"]
        if not args["overlap_ratio"] >= 0 or int(overlap) % 2:
            raise ValueError(f"backbone.overlap_ratio={args['overlap_ratio']!r} must be >= 0 with "
                             f"int(overlap_ratio * window_size) even (got {int(overlap)}): the enlarged window "
                             "grows by the same amount on each side")
        if args["resi_connection"] not in ("1conv", "identity"):
            raise ValueError(f"backbone.resi_connection={args['resi_connection']!r} is unknown; "
                             "allowed: 1conv, identity")

    @classmethod
    def settings_from_weights(cls, state) -> dict:
        settings = super().settings_from_weights(state)
        block0, ws, dim = "layers.0.residual_group.blocks.0.", settings["window_size"], settings["embed_dim"]
        oca_rows = state["layers.0.residual_group.overlap_attn.relative_position_bias_table"].shape[0]
        overlap_window = round(oca_rows ** 0.5) - ws + 1  # (ws + ows - 1)^2 rows
        return {**settings, "compress_ratio": dim // state[block0 + "conv_block.cab.0.weight"].shape[0],
                "squeeze_factor": dim // state[block0 + "conv_block.cab.3.attention.1.weight"].shape[0],
                "overlap_ratio": (overlap_window - ws) / ws}

    def __init__(self, img_size: int = 64, in_chans: int = 3, embed_dim: int = 180, depths: tuple[int, ...] = (6,) * 6,
                 num_heads: tuple[int, ...] = (6,) * 6, window_size: int = 16, compress_ratio: int = 3,
                 squeeze_factor: int = 30, conv_scale: float = 0.01, overlap_ratio: float = 0.5,
                 mlp_ratio: float = 2.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, upscale: int = 4, img_range: float = 1.0, resi_connection: str = "1conv"):
        super().__init__()
        self.shift_size = window_size // 2
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))
        self.register_buffer("relative_position_index_OCA", overlapping_relative_position_index(
            window_size, window_size + int(overlap_ratio * window_size)))
        self._build_head(in_chans, embed_dim, img_range, drop_rate, window_size, upscale)
        rates = drop_path_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList(
            RHAG(embed_dim, depth, heads, window_size, compress_ratio, squeeze_factor, conv_scale, overlap_ratio,
                 mlp_ratio, drop_rate, attn_drop_rate, rates[i], resi_connection)
            for i, (depth, heads) in enumerate(zip(depths, num_heads)))
        self._build_body_end(embed_dim, resi_connection)
        self._build_pixelshuffle_tail(embed_dim, upscale, in_chans)
        self.apply(self._init_weights)
        self.init_sites(depths, upscale)

    def group_inputs(self, x_size, device) -> dict:
        # one mask for the whole forward (HAT's speed-up over SwinIR's per-block masks)
        return {"attn_mask": shifted_window_mask(*x_size, self.window_size, self.shift_size).to(device),
                "rpi_sa": self.relative_position_index_SA, "rpi_oca": self.relative_position_index_OCA}
