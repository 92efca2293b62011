"""The site vocabulary and the dropout regulariser: kinds, probabilities, positions -> sites,
error messages."""

import math

import numpy as np
import pytest
from torch import nn

from srcore.regularizers import REGULARIZERS, build_regularizer
from srcore.regularizers.dropout import DROPOUT_KINDS, Dropout, make_dropout
from srcore.regularizers.sites import resolve_sites as resolve_in, site_names

ALLOWED_16 = "none, first, b1..b16, middle, up1, up2, hr, last, all, half, quarter"


def resolve_sites(position, num_blocks, num_up=2):
    """Positions of ``dropout.position`` on a network with that many blocks and upsampling stages."""
    return resolve_in(position, site_names(num_blocks, num_up), "dropout.position")


def validate_dropout(position, p, kind, num_blocks, num_up=2):
    """The dropout regulariser's checks, in the order pre-flight meets them: settings, then sites."""
    return Dropout(position, p, kind).resolve(site_names(num_blocks, num_up))


def test_make_dropout_kinds():
    assert DROPOUT_KINDS == ("channel", "element")
    ch, el = make_dropout("channel", 0.7), make_dropout("element", 0.3)
    assert isinstance(ch, nn.Dropout2d) and ch.p == 0.7
    assert isinstance(el, nn.Dropout) and not isinstance(el, nn.Dropout2d) and el.p == 0.3
    assert list(ch.parameters()) == [] and ch.state_dict() == {}
    assert make_dropout("channel", 0).p == 0.0
    assert make_dropout("channel", np.float32(0.5)).p == 0.5


@pytest.mark.parametrize("p", [1.5, 1.0, -0.1, "abc", "0.5", True, None, float("nan")])
def test_bad_p(p):
    with pytest.raises(ValueError) as e:
        make_dropout("channel", p)
    assert repr(p) in str(e.value) and "[0, 1)" in str(e.value)


def test_bad_kind():
    with pytest.raises(ValueError) as e:
        make_dropout("foo", 0.5)
    assert "'foo'" in str(e.value) and "channel" in str(e.value) and "element" in str(e.value)


@pytest.mark.parametrize("position, expected", [
    ("none", set()),
    ("first", {"first"}),
    ("b1", {"b1"}),
    ("b16", {"b16"}),
    ("middle", {"b8"}),
    ("up1", {"up1"}),
    ("up2", {"up2"}),
    ("hr", {"hr"}),
    ("last", {"last"}),
    ("all", {f"inblock{k}" for k in range(1, 17)}),
    ("half", {f"inblock{k}" for k in range(9, 17)}),
    ("quarter", {f"inblock{k}" for k in range(13, 17)}),
    (["b4", "last"], {"b4", "last"}),
    (("hr", "last"), {"hr", "last"}),
    (["up1", "up2", "last"], {"up1", "up2", "last"}),
    (["last", "last"], {"last"}),
])
def test_resolve_sites_srresnet(position, expected):
    sites = resolve_sites(position, 16)
    assert sites == frozenset(expected) and isinstance(sites, frozenset)
    assert sites <= set(site_names(16))


def test_resolve_sites_rrdb_23_blocks():
    assert resolve_sites("middle", 23) == {"b12"}
    assert resolve_sites("half", 23) == {f"inblock{k}" for k in range(23 - math.ceil(23 / 2) + 1, 24)}
    assert resolve_sites("half", 23) == {f"inblock{k}" for k in range(12, 24)}
    assert resolve_sites("quarter", 23) == {f"inblock{k}" for k in range(18, 24)}
    assert len(resolve_sites("all", 23)) == 23


def test_resolve_sites_accepts_listconfig():
    omegaconf = pytest.importorskip("omegaconf")
    assert resolve_sites(omegaconf.OmegaConf.create(["b4", "last"]), 16) == {"b4", "last"}


def test_site_names_order():
    assert site_names(2) == ("first", "inblock1", "b1", "inblock2", "b2", "up1", "up2", "hr", "last")
    assert site_names(1, num_up=1) == ("first", "inblock1", "b1", "up1", "hr", "last")


@pytest.mark.parametrize("position, bad", [
    ("b99", "'b99'"),
    ("b0", "'b0'"),
    ("foo", "'foo'"),
    ("B4 ", "'B4 '"),
    ("b4,last", "'b4,last'"),
    (["none", "last"], "'none'"),
    ([], "[]"),
    (["b4", "foo"], "'foo'"),
    (["b4", 3], "3"),
    (None, "None"),
    (5, "5"),
])
def test_bad_positions(position, bad):
    with pytest.raises(ValueError) as e:
        resolve_sites(position, 16)
    msg = str(e.value)
    assert bad in msg and ALLOWED_16 in msg and "(or a list of them)" in msg


def test_out_of_range_message():
    with pytest.raises(ValueError) as e:
        resolve_sites("b99", 16)
    assert str(e.value) == (
        "dropout.position='b99' is out of range: this network has 16 residual blocks, so b<k> needs "
        "1 <= k <= 16. Allowed positions: none, first, b1..b16, middle, up1, up2, hr, last, all, half, "
        "quarter (or a list of them)")


def test_up2_needs_two_upsampling_stages():
    assert resolve_sites("up1", 16, num_up=1) == {"up1"}
    with pytest.raises(ValueError, match="'up2'.*1 upsampling stage"):
        resolve_sites("up2", 16, num_up=1)


def test_validate_dropout_checks_all_three():
    assert validate_dropout(["b4", "last"], 0.7, "channel", 16) == {"b4", "last"}
    with pytest.raises(ValueError, match=r"1\.0.*\[0, 1\)"):
        validate_dropout("last", 1.0, "channel", 16)
    with pytest.raises(ValueError, match="'foo'.*channel, element"):
        validate_dropout("last", 0.5, "foo", 16)
    with pytest.raises(ValueError, match="'b17'.*b1..b16"):
        validate_dropout("b17", 0.5, "channel", 16)
    with pytest.raises(ValueError, match="num_blocks"):
        validate_dropout("last", 0.5, "channel", 0)


def test_dropout_is_a_registered_regularizer_described_by_plain_data():
    assert REGULARIZERS["dropout"] is Dropout
    spec = {"name": "dropout", "position": ("b4", "last"), "p": 0.7, "kind": "channel"}
    reg = build_regularizer(spec)
    assert reg.spec() == {"name": "dropout", "position": ["b4", "last"], "p": 0.7, "kind": "channel"}
    assert build_regularizer(reg).spec() == reg.spec() and build_regularizer(reg) is not reg
    assert (reg.views, reg.tapped_sites) == (1, ())
    assert reg.extra_loss(None, None, {}) is None
    with pytest.raises(ValueError, match="'adaptive'.*dropout"):
        build_regularizer({"name": "adaptive"})
    with pytest.raises(ValueError, match="'dropout'.*kind"):
        build_regularizer({"name": "dropout", "position": "last", "p": 0.5})
