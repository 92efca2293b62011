"""EDSR, SwinIR and HAT: the published variants' parameter counts and state_dict keys (against
key lists written out from the official layouts, not from the code under test), official-layout
weights files loading strictly, test-time window padding, regulariser sites and pre-flight
messages. The published sizes are built on the meta device (no memory, no init), tiny variants
run on the CPU."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from srcore.models import BACKBONES, EDSR, HAT, SwinIR, build_model, check_model, load_model
from srcore.models.checkpoint import load_weights, save_weights
from sweeper import build
from sweeper.compose import compose

# config -> (published parameter count, expected keys); the keys are generated below
PUBLISHED = {
    "edsr": 1_517_571,
    "edsr_l": 43_089_923,
    "swinir": 11_900_199,
    "swinir_s": 929_628,
    "swinir_real": 11_715_559,
    "hat": 20_772_507,
    "hat_s": 9_621_183,
}

# tiny variants: seconds on a CPU; window 8 so a 16 px LR patch is one window
TINY_SWIN = dict(embed_dim=12, depths=[2, 2], num_heads=[2, 3], window_size=8, img_size=16)
TINY = {
    "edsr": dict(num_feat=8, num_block=2),
    "swinir": TINY_SWIN,
    "swinir_real": dict(TINY_SWIN, upsampler="nearest+conv"),
    "swinir_s": dict(TINY_SWIN, upsampler="pixelshuffledirect"),
    "hat": dict(TINY_SWIN, compress_ratio=3, squeeze_factor=4),
}


def backbone_name(variant):
    return variant.split("_")[0]


def tiny(variant, **kw):
    return build_model(backbone_name(variant), **TINY[variant], **kw)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def dropout(position, p=0.5, kind="channel"):
    return [{"name": "dropout", "position": position, "p": p, "kind": kind}]


def with_wb(*modules):
    return {f"{m}.{s}" for m in modules for s in ("weight", "bias")}


# ---------------------------------------------------------------- published architectures

def edsr_keys(num_block, stages=2):
    return with_wb("conv_first", *(f"body.{i}.conv{j}" for i in range(num_block) for j in (1, 2)),
                   "conv_after_body", *(f"upsample.{2 * i}" for i in range(stages)), "conv_last")


def swin_group_keys(n, depth, hat):
    block = "layers.{}.residual_group.blocks.{}."
    keys = set()
    for m in range(depth):
        b = block.format(n, m)
        keys |= with_wb(*(b + s for s in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")))
        keys.add(b + "attn.relative_position_bias_table")
        if hat:
            keys |= with_wb(*(b + "conv_block.cab." + s for s in ("0", "2", "3.attention.1", "3.attention.3")))
        else:
            keys.add(b + "attn.relative_position_index")
            if m % 2:
                keys.add(b + "attn_mask")
    if hat:
        o = f"layers.{n}.residual_group.overlap_attn."
        keys |= with_wb(*(o + s for s in ("norm1", "qkv", "proj", "norm2", "mlp.fc1", "mlp.fc2")))
        keys.add(o + "relative_position_bias_table")
    return keys | with_wb(f"layers.{n}.conv")


def swin_keys(depths, upsampler="pixelshuffle", hat=False):
    keys = with_wb("conv_first", "patch_embed.norm", "norm", "conv_after_body")
    for n, depth in enumerate(depths):
        keys |= swin_group_keys(n, depth, hat)
    keys |= {"pixelshuffle": with_wb("conv_before_upsample.0", "upsample.0", "upsample.2", "conv_last"),
             "nearest+conv": with_wb("conv_before_upsample.0", "conv_up1", "conv_up2", "conv_hr", "conv_last"),
             "pixelshuffledirect": with_wb("upsample.0")}[upsampler]
    return keys | ({"relative_position_index_SA", "relative_position_index_OCA"} if hat else set())


EXPECTED_KEYS = {
    "edsr": edsr_keys(16),
    "edsr_l": edsr_keys(32),
    "swinir": swin_keys([6] * 6),
    "swinir_s": swin_keys([6] * 4, "pixelshuffledirect"),
    "swinir_real": swin_keys([6] * 6, "nearest+conv"),
    "hat": swin_keys([6] * 6, hat=True),
    "hat_s": swin_keys([6] * 6, hat=True),
}


@pytest.mark.parametrize("variant", list(PUBLISHED))
def test_published_variants_from_their_configs(variant):
    """conf/backbone/<variant>.yaml builds the published network: its parameter count and keys."""
    model_args = build.model_args(compose([f"backbone={variant}"]))
    with torch.device("meta"):
        model = build_model(**model_args)
    assert n_params(model) == PUBLISHED[variant]
    assert set(model.state_dict()) == EXPECTED_KEYS[variant]
    assert model.model_args["regularizers"][0] == {"name": "dropout", "position": "last", "p": 0.5,
                                                   "kind": "channel"}


def test_published_shapes_that_strict_loading_depends_on():
    with torch.device("meta"):
        m, s, h = build_model("swinir"), build_model("swinir", img_size=48), build_model("hat")
    block = "layers.0.residual_group.blocks.1."
    assert m.state_dict()[block + "attn_mask"].shape == (64, 64, 64)  # (64 / 8)^2 windows of 8 x 8 tokens
    assert s.state_dict()[block + "attn_mask"].shape == (36, 64, 64)
    assert m.state_dict()[block + "attn.relative_position_bias_table"].shape == (15 * 15, 6)
    assert h.state_dict()[block + "attn.relative_position_bias_table"].shape == (31 * 31, 6)
    # overlapping windows: 16 queries' window vs 24 keys' window
    assert h.state_dict()["layers.0.residual_group.overlap_attn.relative_position_bias_table"].shape == (39 * 39, 6)
    assert h.state_dict()["relative_position_index_OCA"].shape == (256, 576)


@pytest.mark.parametrize("variant", list(PUBLISHED))
def test_settings_read_off_a_published_weights_file(variant):
    model_args = build.model_args(compose([f"backbone={variant}"]))
    with torch.device("meta"):
        state = build_model(**model_args).state_dict()
    settings = BACKBONES[model_args["name"]].settings_from_weights(state)
    assert settings and all(model_args[k] == v for k, v in settings.items()), settings


# ---------------------------------------------------------------- weights files

@pytest.mark.parametrize("variant", list(TINY))
def test_params_ema_file_loads_strictly_and_gives_identical_outputs(variant, tmp_path):
    torch.manual_seed(0)
    src = tiny(variant).eval()
    path = tmp_path / "official.pth"
    torch.save({"params_ema": src.state_dict()}, path)  # an official file: no model_args

    state = torch.load(path, weights_only=True)["params_ema"]
    torch.manual_seed(1)
    dst = build_model(backbone_name(variant), **BACKBONES[backbone_name(variant)].settings_from_weights(state))
    assert load_weights(dst, path).key == "params_ema"
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(src(x), dst.eval()(x))

    save_weights(src, tmp_path / "model.pt", ema_model=src)
    with torch.no_grad():
        assert torch.equal(src(x), load_model(tmp_path / "model.pt")(x))


def test_swinir_weights_need_their_img_size(tmp_path):
    path = tmp_path / "s16.pth"
    torch.save({"params": tiny("swinir").state_dict()}, path)
    with pytest.raises(ValueError, match=r"shape mismatch.*attn_mask \(4, 64, 64\) vs model \(16, 64, 64\)"):
        load_weights(build_model("swinir", **dict(TINY_SWIN, img_size=32)), path)
    load_weights(build_model("swinir", **TINY_SWIN), path)


# ---------------------------------------------------------------- forward

@pytest.mark.parametrize("variant", list(TINY))
@pytest.mark.parametrize("size", [(16, 16), (13, 21), (17, 8)])
def test_output_is_scale_times_input_for_any_size(variant, size):
    m = tiny(variant).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, *size)).shape == (2, 3, 4 * size[0], 4 * size[1])


@pytest.mark.parametrize("name", ["swinir", "hat"])
def test_window_padding_is_reflect_then_crop(name):
    """Exactly what SwinIR's / HAT's test code does around the network."""
    m = tiny(name).eval()
    x = torch.rand(1, 3, 13, 21)
    with torch.no_grad():
        padded = m(F.pad(x, (0, 3, 0, 3), "reflect"))  # 16 x 24: multiples of the window, no padding inside
        assert torch.equal(m(x), padded[..., :52, :84])


def test_too_small_input_says_why():
    with pytest.raises(ValueError, match=r"input 3x16 is too small .* window_size=8 .* at least 5 pixels"):
        tiny("swinir")(torch.rand(1, 3, 3, 16))


@pytest.mark.parametrize("name, scales", [("edsr", (2, 3, 4, 8)), ("swinir", (2, 3, 4, 8)), ("hat", (2, 3))])
def test_other_scales(name, scales):
    for scale in scales:
        m = build_model(name, upscale=scale, **TINY[name]).eval()
        with torch.no_grad():
            assert m(torch.rand(1, 3, 9, 11)).shape == (1, 3, 9 * scale, 11 * scale)
        assert [s for s in m.site_modules() if s.startswith("up")] == [f"up{i + 1}" for i in range({2: 1, 3: 1, 4: 2,
                                                                                                     8: 3}[scale])]


def test_edsr_normalises_with_its_mean_and_range():
    m = EDSR(num_feat=4, num_block=1).eval()
    for conv in (m.conv_first, m.conv_last, *m.body[0].children(), m.conv_after_body, *m.upsample.stages()[0]):
        for p in conv.parameters():
            nn.init.zeros_(p)
    with torch.no_grad():  # every conv outputs 0: the output is the mean, the input does not matter
        out = m(torch.rand(1, 3, 4, 4))
    assert torch.allclose(out, torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1).expand(1, 3, 16, 16))
    assert "mean" not in m.state_dict()


# ---------------------------------------------------------------- stochastic depth

def test_drop_path_rate_is_linear_over_all_blocks_and_zero_turns_it_off():
    m = build_model("swinir", **dict(TINY_SWIN, depths=[2, 3]), drop_path_rate=0.4)
    rates = [b.drop_path.p if hasattr(b.drop_path, "p") else 0.0 for layer in m.layers
             for b in layer.residual_group.blocks]
    assert rates == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    off = build_model("hat", **TINY["hat"], drop_path_rate=0)
    assert all(isinstance(b.drop_path, nn.Identity) for layer in off.layers for b in layer.residual_group.blocks)
    assert check_model("swinir", **TINY_SWIN)["drop_path_rate"] == 0.1  # the published default


def test_drop_path_drops_whole_samples_in_training_only():
    from srcore.models.window_attention import DropPath
    layer = DropPath(0.5)
    x = torch.rand(64, 16, 4) + 0.1
    torch.manual_seed(0)
    out = layer(x)
    kept = (out != 0).flatten(1).all(1)
    assert torch.equal((out == 0).flatten(1).all(1), ~kept)  # each sample: all kept or all dropped
    assert 10 < kept.sum() < 54
    assert torch.allclose(out[kept], x[kept] / 0.5)
    assert torch.equal(layer.eval()(x), x)

    torch.manual_seed(0)
    m = build_model("swinir", **dict(TINY_SWIN, depths=[1, 1, 1], num_heads=[2, 2, 2]), drop_path_rate=0.9)
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), m.eval()(x))
        torch.manual_seed(1)
        a = m.train()(x)
        torch.manual_seed(2)
        assert not torch.equal(a, m(x))


# ---------------------------------------------------------------- sites

SITES = {
    "edsr": ("first", *(s for k in (1, 2) for s in (f"mid{k}", f"inblock{k}", f"b{k}")), "up1", "up2", "last"),
    "swinir": ("first", "inblock1", "b1", "inblock2", "b2", "up1", "up2", "last"),
    "swinir_real": ("first", "inblock1", "b1", "inblock2", "b2", "up1", "up2", "hr", "last"),
    "swinir_s": ("first", "inblock1", "b1", "inblock2", "b2", "last"),
    "hat": ("first", "inblock1", "b1", "inblock2", "b2", "up1", "up2", "last"),
}
# (channels, scale of the spatial size) each site sees on the tiny variants
LAST_SHAPE = {"edsr": (8, 4), "swinir": (64, 4), "swinir_real": (64, 4), "swinir_s": (12, 1), "hat": (64, 4)}


@pytest.mark.parametrize("variant", list(TINY))
def test_sites_in_forward_order_with_image_layout_features(variant):
    m = tiny(variant).eval()
    assert tuple(m.site_modules()) == SITES[variant]
    assert tuple(m.site_modules()) == type(m).site_names_for(m.model_args)
    seen = []
    for name, module in m.site_modules().items():
        module.register_forward_hook(lambda mod, i, o, name=name: seen.append((name, tuple(o.shape))))
    with torch.no_grad():
        m(torch.rand(2, 3, 16, 16))
    assert [n for n, _ in seen] == list(SITES[variant])
    shapes = dict(seen)
    width = TINY[variant].get("embed_dim", TINY[variant].get("num_feat"))
    assert shapes["first"] == shapes["b2"] == (2, width, 16, 16)
    channels, scale = LAST_SHAPE[variant]
    assert shapes["last"] == (2, channels, 16 * scale, 16 * scale)
    if "up1" in shapes:
        assert shapes["up1"][2:] == (32, 32)


@pytest.mark.parametrize("variant", list(TINY))
def test_every_position_resolves_and_keys_never_change(variant):
    plain = set(tiny(variant).state_dict())
    for position, expected in [("last", {"last"}), ("first", {"first"}), ("middle", {"b1"}), ("b2", {"b2"}),
                               ("all", {"inblock1", "inblock2"}), ("half", {"inblock2"}),
                               ("quarter", {"inblock2"}), (["first", "last"], {"first", "last"})]:
        m = tiny(variant, regularizers=dropout(position))
        assert m.regularizers[0].sites == expected
        assert {s for s, mod in m.site_modules().items() if isinstance(mod, nn.Dropout2d)} == expected
        assert set(m.state_dict()) == plain


@pytest.mark.parametrize("variant", ["swinir", "hat", "swinir_s"])
def test_channel_dropout_at_a_group_zeroes_whole_channels(variant):
    torch.manual_seed(0)
    m = tiny(variant, regularizers=dropout("b1", 0.5)).train()
    seen = {}
    m.site_modules()["b1"].register_forward_hook(lambda mod, i, o: seen.setdefault("b1", o.detach()))
    m(torch.rand(2, 3, 16, 16))
    zero = (seen["b1"] == 0).flatten(2).all(-1)
    assert zero.any() and not zero.all()
    with torch.no_grad():
        assert torch.equal(m.eval()(torch.ones(1, 3, 16, 16)), m(torch.ones(1, 3, 16, 16)))


def test_a_tiny_variant_trains():
    torch.manual_seed(0)
    m = tiny("hat", regularizers=dropout("last", 0.5)).train()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    lr, hr = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 64, 64)
    losses = []
    for _ in range(5):
        loss = F.l1_loss(m(lr), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in m.parameters())
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------- pre-flight

@pytest.mark.parametrize("name, kwargs, message", [
    ("swinir", dict(num_feat=8), r"^backbone.num_feat is not a setting of swinir; allowed: img_size, in_chans, "),
    ("swinir", dict(depths=[2, 0]), r"^backbone.depths=\[2, 0\] must be a non-empty list of positive integers$"),
    ("swinir", dict(depths=[]), r"backbone.depths=\[\] must be a non-empty list"),
    ("swinir", dict(depths=6), r"backbone.depths=6 must be a non-empty list"),
    ("swinir", dict(depths=[6, 6]), r"^backbone.num_heads=\[6, 6, 6, 6, 6, 6\] must have one entry per group of "
                                    r"backbone.depths=\[6, 6\]$"),
    ("swinir", dict(embed_dim=20), r"^backbone.embed_dim=20 must be divisible by every backbone.num_heads"),
    ("swinir", dict(img_size=60), r"^backbone.img_size=60 must be a multiple of backbone.window_size=8 larger"),
    ("swinir", dict(upsampler="bilinear"), r"^backbone.upsampler='bilinear' is unknown; allowed: pixelshuffle, "
                                           r"nearest\+conv, pixelshuffledirect$"),
    ("swinir", dict(upsampler="nearest+conv", upscale=2), r"^scale=2 is not supported by swinir's nearest\+conv"),
    ("swinir", dict(drop_path_rate=1.5), r"^backbone.drop_path_rate=1.5 must be in \[0, 1\)$"),
    ("swinir", dict(drop_path_rate="high"), r"^backbone.drop_path_rate='high' must be a number$"),
    ("swinir", dict(resi_connection="identity"), r"resi_connection='identity' is unknown; allowed: 1conv, 3conv"),
    ("swinir", dict(upscale=5), r"^scale=5 is not supported by swinir; allowed: \(2, 3, 4, 8\)$"),
    ("hat", dict(overlap_ratio=0.2), r"^backbone.overlap_ratio=0.2 must be >= 0 with int\(overlap_ratio \* "
                                     r"window_size\) even \(got 3\)"),
    ("hat", dict(embed_dim=24, num_heads=[2] * 6), r"^backbone.squeeze_factor=30 must be <= backbone.embed_dim=24$"),
    ("edsr", dict(rgb_mean=[0.5, 0.5]), r"^backbone.rgb_mean=\[0.5, 0.5\] must have one value per channel"),
    ("edsr", dict(num_block=0), r"^backbone.num_block=0 must be a positive integer$"),
    ("edsr", dict(upscale=5), r"^scale=5 is not supported by edsr; allowed: \(2, 3, 4, 8\)$"),
])
def test_check_model_messages(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_model(name, **kwargs)


def test_positions_out_of_range_name_the_groups():
    with pytest.raises(ValueError, match=r"'b7' is out of range: this network has 6 residual blocks.*b1\.\.b6"):
        check_model("swinir", regularizers=dropout("b7"))
    with pytest.raises(ValueError, match=r"'hr' is not a known position.*up1, up2, last"):
        check_model("hat", regularizers=dropout("hr"))
    with pytest.raises(ValueError, match=r"'up1' is out of range: this network has 0 upsampling"):
        check_model("swinir", upsampler="pixelshuffledirect", regularizers=dropout("up1"))


def test_model_args_are_plain_lists():
    args = check_model("hat")
    assert args["depths"] == [6] * 6 and type(args["depths"]) is list
    assert check_model("edsr")["rgb_mean"] == [0.4488, 0.4371, 0.4040]
    assert check_model("swinir", depths=(2, 2), num_heads=(2, 2), embed_dim=12)["depths"] == [2, 2]


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(PUBLISHED))
def test_published_variants_run_with_real_weights(variant):
    """Full-size construction (real init) and a forward pass on a small input."""
    model = build_model(**build.model_args(compose([f"backbone={variant}"]))).eval()
    assert n_params(model) == PUBLISHED[variant]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 20, 12)).shape == (1, 3, 80, 48)


@pytest.mark.parametrize("cls", [EDSR, SwinIR, HAT])
def test_defaults_are_the_published_m_models(cls):
    """``build_model(name)`` with no settings (as analysis.interpret does) is the published M model."""
    with torch.device("meta"):
        model = build_model(cls.name, upscale=4)
    assert n_params(model) == PUBLISHED[cls.name]
