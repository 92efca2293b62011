"""Backbones: BasicSR compatibility (parameter counts, key names, checkpoints) and dropout placement."""

import pytest
import torch
from torch import nn

from srcore.dropout import site_names
from srcore.models import BACKBONES, RRDBNet, SRResNet, build_model
from srcore.models.checkpoint import load_weights, save_weights

# small configs keep the forward passes fast; positions are chosen to exist in both
SMALL = {
    "srresnet": dict(num_feat=8, num_block=4),
    "rrdb": dict(num_feat=8, num_block=4, num_grow_ch=4),
}
POSITIONS = {  # position -> sites it must place dropout at (4 body blocks)
    "first": {"first"},
    "b1": {"b1"},
    "b3": {"b3"},
    "middle": {"b2"},
    "up1": {"up1"},
    "up2": {"up2"},
    "hr": {"hr"},
    "last": {"last"},
    "all": {"inblock1", "inblock2", "inblock3", "inblock4"},
    "half": {"inblock3", "inblock4"},
    "quarter": {"inblock4"},
    ("b2", "last"): {"b2", "last"},
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def small(name, **kw):
    return build_model(name, **SMALL[name], **kw)


def zero_channels(t):
    """Boolean (N, C): which feature maps are entirely zero."""
    return (t == 0).flatten(2).all(-1)


def record_sites(model):
    """Forward hooks on every site; returns the dict they fill with each site's output."""
    seen = {}
    for name, module in model.site_modules().items():
        module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.detach().clone()))
    return seen


# ---------------------------------------------------------------- BasicSR compatibility

def test_default_parameter_counts_match_basicsr():
    assert n_params(SRResNet()) == 1_517_571  # BasicSR MSRResNet x4
    assert n_params(RRDBNet()) == 16_697_987  # BasicSR RRDBNet x4 (ESRGAN)


def expected_srresnet_keys(num_block, upscale):
    convs = ["conv_first"] + [f"body.{i}.conv{j}" for i in range(num_block) for j in (1, 2)]
    convs += ["upconv1", "upconv2"] if upscale == 4 else ["upconv1"]
    convs += ["conv_hr", "conv_last"]
    return {f"{c}.{w}" for c in convs for w in ("weight", "bias")}


def expected_rrdb_keys(num_block):
    convs = ["conv_first"] + [f"body.{i}.rdb{r}.conv{c}" for i in range(num_block) for r in (1, 2, 3)
                              for c in range(1, 6)]
    convs += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    return {f"{c}.{w}" for c in convs for w in ("weight", "bias")}


@pytest.mark.parametrize("position", ["none", *[p for p in POSITIONS if isinstance(p, str)], ["first", "all", "last"]])
def test_state_dict_keys_are_basicsr_and_independent_of_dropout(position):
    m = SRResNet(num_feat=8, num_block=3, dropout_position=position, dropout_p=0.5)
    assert set(m.state_dict()) == expected_srresnet_keys(3, 4)
    r = RRDBNet(num_feat=8, num_block=3, num_grow_ch=4, dropout_position=position, dropout_p=0.5)
    assert set(r.state_dict()) == expected_rrdb_keys(3)
    assert n_params(m) == n_params(SRResNet(num_feat=8, num_block=3))


def test_state_dict_keys_x2_x3():
    for upscale in (2, 3):
        assert set(SRResNet(num_feat=8, num_block=2, upscale=upscale).state_dict()) == expected_srresnet_keys(2, 2)
    assert SRResNet(num_feat=8, num_block=1, upscale=3).upconv1.out_channels == 8 * 9


def test_basicsr_init():
    m = SRResNet()
    w = m.conv_first.weight
    kaiming_std = (2 / (3 * 9)) ** 0.5
    assert abs(w.std().item() / (0.1 * kaiming_std) - 1) < 0.2  # kaiming_normal scaled by 0.1
    assert m.body[0].conv1.bias.abs().sum() == 0 and m.conv_last.bias.abs().sum() == 0
    r = RRDBNet(num_feat=16, num_block=1, num_grow_ch=8)
    assert r.body[0].rdb1.conv1.bias.abs().sum() == 0  # dense-block convs: BasicSR init
    assert r.conv_first.bias.abs().sum() > 0  # the rest: PyTorch default, as in BasicSR


def test_build_model_unknown_name():
    assert set(BACKBONES) == {"srresnet", "rrdb"}
    with pytest.raises(ValueError, match="'edsr'.*srresnet, rrdb"):
        build_model("edsr")


def test_output_shapes():
    x = torch.rand(1, 3, 8, 12)  # x1 RRDB pixel-unshuffles by 4: sizes must be multiples of 4
    with torch.no_grad():
        for upscale in (2, 3, 4):
            assert SRResNet(num_feat=8, num_block=1, upscale=upscale)(x).shape == (1, 3, 8 * upscale, 12 * upscale)
        for upscale in (1, 2, 4):
            out = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, upscale=upscale)(x)
            assert out.shape == (1, 3, 8 * upscale, 12 * upscale)
    with pytest.raises(ValueError, match="'up2'"):  # x2 SRResNet has one upsampling stage
        SRResNet(num_feat=8, num_block=1, upscale=2, dropout_position="up2", dropout_p=0.5)


def test_rrdb_pixel_unshuffle_matches_basicsr_channel_order():
    x = torch.rand(2, 3, 8, 6)
    b, c, hh, hw = x.shape  # BasicSR's pixel_unshuffle, written out
    ref = x.view(b, c, hh // 2, 2, hw // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, hh // 2, hw // 2)
    assert torch.equal(torch.nn.functional.pixel_unshuffle(x, 2), ref)


# ---------------------------------------------------------------- checkpoints

def test_load_basicsr_checkpoint(tmp_path):
    src, ema = SRResNet(num_feat=8, num_block=2), SRResNet(num_feat=8, num_block=2)
    path = tmp_path / "net_g.pth"
    torch.save({"params": src.state_dict(), "params_ema": ema.state_dict()}, path)

    dst = SRResNet(num_feat=8, num_block=2, dropout_position="last", dropout_p=0.7)
    assert load_weights(dst, path).key == "params_ema"
    assert torch.equal(dst.conv_last.weight, ema.conv_last.weight)
    assert load_weights(dst, str(path), key="params").key == "params"
    assert torch.equal(dst.conv_last.weight, src.conv_last.weight)

    with pytest.raises(ValueError, match="'model'.*params, params_ema"):
        load_weights(dst, path, key="model")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(dst, tmp_path / "nope.pth")


def test_load_bare_training_and_dataparallel_state_dicts():
    src = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)
    dst = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)
    sd = src.state_dict()
    assert load_weights(dst, sd).key is None
    assert load_weights(dst, {"model": sd, "ema": None, "iter": 5}).key == "model"
    assert load_weights(dst, {"model": {}, "ema": sd}).key == "ema"
    load_weights(dst, {f"module.{k}": v for k, v in sd.items()})
    assert torch.equal(dst.conv_last.weight, src.conv_last.weight)


def test_mismatched_checkpoint_names_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"params": SRResNet(num_feat=8, num_block=2, upscale=2).state_dict()}, path)
    dst = SRResNet(num_feat=8, num_block=3)
    with pytest.raises(ValueError) as e:
        load_weights(dst, path)
    msg = str(e.value)
    assert "other.pth" in msg and "missing keys" in msg and "body.2.conv1.weight" in msg and "upconv2." in msg
    wide = {"params": SRResNet(num_feat=16, num_block=3).state_dict()}
    with pytest.raises(ValueError, match="shape mismatch.*conv_first.weight"):
        load_weights(dst, wide, strict=False)


def test_save_weights_round_trip(tmp_path):
    model, ema = SRResNet(num_feat=8, num_block=1), SRResNet(num_feat=8, num_block=1)
    path = tmp_path / "sub" / "net.pth"
    save_weights(model, path, ema_model=ema)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"params", "params_ema"}
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind
    dst = SRResNet(num_feat=8, num_block=1)
    load_weights(dst, path)
    assert torch.equal(dst.conv_first.weight, ema.conv_first.weight)
    save_weights(model, path)  # overwrite, no EMA
    assert set(torch.load(path, weights_only=True)) == {"params"}


# ---------------------------------------------------------------- dropout placement

@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_site_modules(name):
    m = small(name, dropout_position=("b2", "last", "quarter"), dropout_p=0.5, dropout_kind="element")
    sites = m.site_modules()
    assert tuple(sites) == site_names(4)
    assert m.dropout_sites == {"b2", "last", "inblock4"}
    for site, module in sites.items():
        assert type(module) is (nn.Dropout if site in m.dropout_sites else nn.Identity)
        assert list(module.parameters()) == []
    assert sites["inblock2"] is m.body[1].site


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
@pytest.mark.parametrize("position", list(POSITIONS), ids=str)
def test_channel_dropout_lands_at_its_site(name, position):
    torch.manual_seed(0)
    m = small(name, dropout_position=list(position) if isinstance(position, tuple) else position,
              dropout_p=0.999).train()
    expected = POSITIONS[position]
    assert m.dropout_sites == expected
    assert {s for s, mod in m.site_modules().items() if isinstance(mod, nn.Dropout2d)} == expected

    seen = record_sites(m)
    m(torch.rand(2, 3, 8, 8))
    order = list(seen)
    first_drop = min(order.index(s) for s in expected)
    for site in order[:first_drop]:  # upstream of the dropout: no feature map is zero
        assert not zero_channels(seen[site]).any(), site
    for site in expected:  # at the site: (nearly) all feature maps zeroed, whole maps only
        t = seen[site]
        zc = zero_channels(t)
        assert zc.float().mean() > 0.9, site
        assert ((t == 0).flatten(2).any(-1) == zc).all(), f"{site}: partly zeroed feature map"


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_last_is_the_input_of_conv_last(name):
    torch.manual_seed(0)
    m = small(name, dropout_position="last", dropout_p=0.999).train()
    inputs = {}
    for conv in ("conv_hr", "conv_last"):
        getattr(m, conv).register_forward_pre_hook(lambda mod, args, conv=conv: inputs.__setitem__(conv, args[0].clone()))
    m(torch.rand(2, 3, 8, 8))
    assert zero_channels(inputs["conv_last"]).float().mean() > 0.9
    assert not zero_channels(inputs["conv_hr"]).any()


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_inblock_dropout_acts_before_the_residual_add(name):
    torch.manual_seed(0)
    m = small(name, dropout_position="quarter", dropout_p=0.999).train()
    block = m.body[3]
    seen = {}
    block.site.register_forward_hook(lambda mod, i, o: seen.__setitem__("branch", o.clone()))
    block.register_forward_hook(lambda mod, i, o: seen.update(block_in=i[0].clone(), block_out=o.clone()))
    m(torch.rand(2, 3, 8, 8))
    dropped = zero_channels(seen["branch"])
    assert dropped.float().mean() > 0.9
    assert not zero_channels(seen["block_out"]).any()  # the skip path carries the input through
    # a dropped branch leaves the block's output equal to its input in that feature map
    assert torch.equal(seen["block_out"][dropped], seen["block_in"][dropped])


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_element_dropout_zeroes_elements_not_maps(name):
    torch.manual_seed(0)
    m = small(name, dropout_position="last", dropout_p=0.5, dropout_kind="element").train()
    seen = record_sites(m)
    m(torch.rand(2, 3, 8, 8))
    t = seen["last"]
    assert 0.4 < (t == 0).float().mean() < 0.6
    assert not zero_channels(t).any()
    assert type(m.sites["last"]) is nn.Dropout


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_dropout_only_acts_in_training(name):
    torch.manual_seed(0)
    m = small(name, dropout_position=["first", "all", "b2", "up1", "last"], dropout_p=0.9)
    plain = small(name)
    plain.load_state_dict(m.state_dict())
    x = torch.rand(2, 3, 8, 8)
    m.eval(), plain.eval()
    with torch.no_grad():
        a, b, ref = m(x), m(x), plain(x)
    assert torch.equal(a, b) and torch.equal(a, ref)

    # In training two passes differ. One site and 32 feature maps, so that p=0.9 practically never
    # drops every map of a sample (stacked sites would, and hide the randomness); compare exactly,
    # since SRResNet's 0.1-scaled init keeps the learned residual small.
    m = build_model(name, **dict(SMALL[name], num_feat=32), dropout_position="last", dropout_p=0.9).train()
    with torch.no_grad():
        assert not torch.equal(m(x), m(x))
