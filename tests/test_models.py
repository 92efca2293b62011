"""Backbones: BasicSR compatibility (parameter counts, key names, checkpoints), the facts they
state, networks rebuilt from their weights files, and dropout placement."""

import pytest
import torch
from torch import nn

from srcore.models import BACKBONES, RRDBNet, SRResNet, build_model, check_model, load_model
from srcore.models.checkpoint import load_weights, save_weights
from srcore.regularizers.sites import site_names

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


def dropout(position, p, kind="channel"):
    """The ``regularizers`` argument of a network with dropout."""
    return [{"name": "dropout", "position": position, "p": p, "kind": kind}]


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
    m = build_model("srresnet", num_feat=8, num_block=3, regularizers=dropout(position, 0.5))
    assert set(m.state_dict()) == expected_srresnet_keys(3, 4)
    r = build_model("rrdb", num_feat=8, num_block=3, num_grow_ch=4, regularizers=dropout(position, 0.5))
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
    assert {"srresnet", "rrdb"} <= set(BACKBONES)
    with pytest.raises(ValueError, match="'foo'.*srresnet, rrdb"):
        build_model("foo")


def test_output_shapes():
    x = torch.rand(1, 3, 8, 12)  # x1 RRDB pixel-unshuffles by 4: sizes must be multiples of 4
    with torch.no_grad():
        for upscale in (2, 3, 4):
            assert SRResNet(num_feat=8, num_block=1, upscale=upscale)(x).shape == (1, 3, 8 * upscale, 12 * upscale)
        for upscale in (1, 2, 4):
            out = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, upscale=upscale)(x)
            assert out.shape == (1, 3, 8 * upscale, 12 * upscale)
    with pytest.raises(ValueError, match="'up2'"):  # x2 SRResNet has one upsampling stage
        build_model("srresnet", num_feat=8, num_block=1, upscale=2, regularizers=dropout("up2", 0.5))


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

    dst = build_model("srresnet", num_feat=8, num_block=2, regularizers=dropout("last", 0.7))
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
    model, ema = build_model("srresnet", num_feat=8, num_block=1), build_model("srresnet", num_feat=8, num_block=1)
    path = tmp_path / "sub" / "net.pth"
    save_weights(model, path, ema_model=ema)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"params", "params_ema", "model_args"}
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind
    dst = SRResNet(num_feat=8, num_block=1)
    load_weights(dst, path)
    assert torch.equal(dst.conv_first.weight, ema.conv_first.weight)
    save_weights(model, path)  # overwrite, no EMA
    assert set(torch.load(path, weights_only=True)) == {"params", "model_args"}


def test_load_model_rebuilds_the_network_from_its_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("rrdb", num_feat=8, num_block=2, num_grow_ch=4, upscale=2,
                        regularizers=dropout(["b1", "last"], 0.5, "element"))
    ema = build_model(**model.model_args)
    path = tmp_path / "model.pt"
    save_weights(model, path, ema_model=ema)
    args = torch.load(path, weights_only=True)["model_args"]
    assert args == model.model_args == {
        "name": "rrdb", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 2, "num_grow_ch": 4,
        "upscale": 2, "regularizers": [{"name": "dropout", "position": ["b1", "last"], "p": 0.5, "kind": "element"}]}
    loaded = load_model(path)
    assert type(loaded) is RRDBNet and not loaded.training and loaded.model_args == model.model_args
    assert isinstance(loaded.sites["last"], nn.Dropout) and loaded.regularizers[0].sites == {"b1", "last"}
    for k, v in ema.state_dict().items():  # EMA preferred, as load_weights
        assert torch.equal(loaded.state_dict()[k], v), k


def test_load_model_needs_model_args(tmp_path):
    path = tmp_path / "net_g.pth"
    torch.save({"params_ema": SRResNet(num_feat=8, num_block=1).state_dict()}, path)
    with pytest.raises(ValueError, match="net_g.pth.*model_args.*backbone"):
        load_model(path)
    save_weights(SRResNet(num_feat=8, num_block=1), path)  # built without build_model: nothing to store
    with pytest.raises(ValueError, match="net_g.pth.*model_args"):
        load_model(path)


# ---------------------------------------------------------------- facts each backbone states

def test_backbones_state_their_scales_and_sites():
    assert (SRResNet.SCALES, RRDBNet.SCALES) == ((2, 3, 4), (1, 2, 4))
    assert SRResNet.site_names(4, 4) == site_names(4, mid=True) == RRDBNet.site_names(4, 1)
    assert SRResNet.site_names(4, 3) == site_names(4, num_up=1, mid=True)
    for name in SMALL:
        cls = BACKBONES[name]
        assert cls.name == name
        for upscale in cls.SCALES:
            m = build_model(name, upscale=upscale, **SMALL[name])
            assert tuple(m.site_modules()) == cls.site_names(SMALL[name]["num_block"], upscale)


def test_check_args_messages():
    SRResNet.check_args(3, num_feat=8, num_block=2)
    with pytest.raises(ValueError, match=r"^scale=1 is not supported by srresnet; allowed: \(2, 3, 4\)$"):
        SRResNet.check_args(1)
    with pytest.raises(ValueError, match=r"^scale=3 is not supported by rrdb; allowed: \(1, 2, 4\)$"):
        RRDBNet.check_args(3)
    for key, value in [("num_feat", 0), ("num_block", -2), ("num_grow_ch", 1.5), ("num_block", True)]:
        with pytest.raises(ValueError, match=f"^backbone.{key}={value!r} must be a positive integer$"):
            RRDBNet.check_args(4, **{key: value})
    with pytest.raises(ValueError, match="backbone.num_grow_ch is not a setting of srresnet"):
        SRResNet.check_args(4, num_grow_ch=8)


def test_check_model_validates_without_building():
    spec = dropout("b2", 0.7)
    assert check_model("srresnet", 4, spec, num_feat=8, num_block=2) == build_model(
        "srresnet", regularizers=spec, num_feat=8, num_block=2).model_args
    for kwargs, message in [(dict(name="foo"), "backbone='foo' is unknown"),
                            (dict(name="rrdb", upscale=3), "scale=3"),
                            (dict(name="srresnet", num_block=0), "backbone.num_block=0"),
                            (dict(name="srresnet", regularizers=dropout("b99", 0.5)), r"b99.*b1\.\.b16"),
                            (dict(name="srresnet", regularizers=dropout("up2", 0.5), upscale=2), "'up2'"),
                            (dict(name="srresnet", regularizers=dropout("foo", 0.5)), "foo.*none, first"),
                            (dict(name="srresnet", regularizers=dropout("last", 0.5, "spatial")),
                             "spatial.*channel, element"),
                            (dict(name="srresnet", regularizers=dropout("last", 1.5)), r"1\.5.*\[0, 1\)")]:
        with pytest.raises(ValueError, match=message):
            check_model(**kwargs)


def test_regularizers_leave_the_initial_weights_alone():
    torch.manual_seed(3)
    plain = build_model("srresnet", num_feat=8, num_block=2)
    torch.manual_seed(3)
    regularized = build_model("srresnet", num_feat=8, num_block=2, regularizers=dropout(["all", "last"], 0.5))
    assert list(plain.state_dict()) == list(regularized.state_dict())
    for (k, a), b in zip(plain.state_dict().items(), regularized.state_dict().values()):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------- dropout placement

@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_site_modules(name):
    m = small(name, regularizers=dropout(("b2", "last", "quarter"), 0.5, "element"))
    sites = m.site_modules()
    assert tuple(sites) == site_names(4, mid=True)
    (reg,) = m.regularizers
    assert reg.sites == {"b2", "last", "inblock4"}
    for site, module in sites.items():
        assert isinstance(module, nn.Dropout if site in reg.sites else nn.Identity)
        assert list(module.parameters()) == []
    assert sites["inblock2"] is m.body[1].site


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
@pytest.mark.parametrize("position", list(POSITIONS), ids=str)
def test_channel_dropout_lands_at_its_site(name, position):
    torch.manual_seed(0)
    m = small(name, regularizers=dropout(list(position) if isinstance(position, tuple) else position,
                                         0.999)).train()
    expected = POSITIONS[position]
    assert m.regularizers[0].sites == expected
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
    m = small(name, regularizers=dropout("last", 0.999)).train()
    inputs = {}
    for conv in ("conv_hr", "conv_last"):
        getattr(m, conv).register_forward_pre_hook(lambda mod, args, conv=conv: inputs.__setitem__(conv, args[0].clone()))
    m(torch.rand(2, 3, 8, 8))
    assert zero_channels(inputs["conv_last"]).float().mean() > 0.9
    assert not zero_channels(inputs["conv_hr"]).any()


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_inblock_dropout_acts_before_the_residual_add(name):
    torch.manual_seed(0)
    m = small(name, regularizers=dropout("quarter", 0.999)).train()
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
    m = small(name, regularizers=dropout("last", 0.5, "element")).train()
    seen = record_sites(m)
    m(torch.rand(2, 3, 8, 8))
    t = seen["last"]
    assert 0.4 < (t == 0).float().mean() < 0.6
    assert not zero_channels(t).any()
    assert isinstance(m.sites["last"], nn.Dropout)


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_dropout_only_acts_in_training(name):
    torch.manual_seed(0)
    m = small(name, regularizers=dropout(["first", "all", "b2", "up1", "last"], 0.9))
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
    m = build_model(name, **dict(SMALL[name], num_feat=32), regularizers=dropout("last", 0.9)).train()
    with torch.no_grad():
        assert not torch.equal(m(x), m(x))
