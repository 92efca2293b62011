"""Adaptive Dropout, DropPath and Simple Align, each against an independent computation: the
layers' statistics, the schedule at its boundaries, the alignment loss in NumPy, the shared
crop of degraded views, the identity at eval, and resume bit-identity through the training loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from srcore.data import TrainPatches, builtin_images
from srcore.degrade import Bicubic, SimpleMulti
from srcore.degrade.common import draw_crop
from srcore.degrade.realesrgan import RealESRGANDegradation
from srcore.models import build_model
from srcore.regularizers import build_regularizer
from srcore.regularizers.adaptive_dropout import AdaptiveDropoutLayer
from srcore.regularizers.droppath import DropPathLayer
from srcore.regularizers.sites import site_names
from srcore.train import Interrupted, TrainSettings, degraded_views, train
from tests.conftest import ROOT, TINY
from tests.test_backbones import TINY_SWIN
from tests.degrade_params import paper_realesrgan_params

CONF = ROOT / "conf" / "regularizer"
MULTI = {k: v for k, v in yaml.safe_load((ROOT / "conf" / "degradation" / "multi.yaml").read_text()).items()
         if k not in ("name", "gt_size")}


def spec(name: str, **overrides) -> dict:
    """A regulariser's spec with the defaults of its config file (their only home)."""
    return {"name": name, **yaml.safe_load((CONF / f"{name}.yaml").read_text()), **overrides}


def layers(model, cls) -> dict[str, nn.Module]:
    return {s: m for s, m in model.site_modules().items() if isinstance(m, cls)}


# ---------------------------------------------------------------- the mid<k> site
@pytest.mark.parametrize("name, first_conv, channels", [("srresnet", "conv1", 8), ("rrdb", "rdb1.conv1", 4)])
def test_mid_site_is_the_output_of_the_branchs_first_conv(name, first_conv, channels):
    m = build_model(name, num_feat=8, num_block=3, **({"num_grow_ch": 4} if name == "rrdb" else {}))
    assert tuple(m.site_modules()) == site_names(3, mid=True)
    assert site_names(1, mid=True) == ("first", "mid1", "inblock1", "b1", "up1", "up2", "hr", "last")
    seen = {}
    conv = m.body[1].get_submodule(first_conv)
    conv.register_forward_hook(lambda mod, i, o: seen.__setitem__("conv", o.clone()))
    m.site_modules()["mid2"].register_forward_hook(lambda mod, i, o: seen.__setitem__("mid", i[0].clone()))
    m(torch.rand(1, 3, 8, 8))
    assert seen["mid"].shape[1] == channels and torch.equal(seen["mid"], seen["conv"])


def test_new_regularizers_leave_keys_and_initial_weights_alone():
    torch.manual_seed(3)
    plain = build_model("srresnet", num_feat=8, num_block=2)
    torch.manual_seed(3)
    regularized = build_model("srresnet", num_feat=8, num_block=2,
                              regularizers=[spec("adaptive_dropout"), spec("droppath"), spec("simple_align")])
    assert list(plain.state_dict()) == list(regularized.state_dict())
    for (k, a), b in zip(plain.state_dict().items(), regularized.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_every_regularizer_is_the_identity_at_eval(name):
    small = dict(num_feat=8, num_block=2, **({"num_grow_ch": 4} if name == "rrdb" else {}))
    regs = [{"name": "dropout", "position": ["first", "all", "last"], "p": 0.9, "kind": "channel"},
            spec("adaptive_dropout", w0=0.0, p=0.9), spec("droppath", rate=0.9, schedule="constant"),
            spec("simple_align")]
    m, plain = build_model(name, **small, regularizers=regs), build_model(name, **small)
    plain.load_state_dict(m.state_dict())
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), plain.eval()(x))
        assert not torch.equal(m.train()(x), plain(x))  # and they do act in training




@pytest.mark.parametrize("name, kwargs", [
    ("edsr", dict(num_feat=8, num_block=2)), ("swinir", TINY_SWIN),
    ("swinir", dict(TINY_SWIN, upsampler="nearest+conv")), ("swinir", dict(TINY_SWIN, upsampler="pixelshuffledirect")),
    ("hat", dict(TINY_SWIN, compress_ratio=3, squeeze_factor=4))], ids=["edsr", "swinir", "swinir_real", "swinir_s", "hat"])
def test_every_regularizer_is_the_identity_at_eval_on_the_new_backbones(name, kwargs):
    """As above on EDSR, SwinIR (its three upsamplers) and HAT; Adaptive Dropout where there are
    mid<k> sites (EDSR). Their own drop path (0.1) is in both networks."""
    regs = [{"name": "dropout", "position": ["first", "all", "last"], "p": 0.9, "kind": "channel"},
            spec("droppath", rate=0.9, schedule="constant"), spec("simple_align")]
    if name == "edsr":
        regs.append(spec("adaptive_dropout", w0=0.0, p=0.9))
    torch.manual_seed(0)
    m, plain = build_model(name, **kwargs, regularizers=regs), build_model(name, **kwargs)
    plain.load_state_dict(m.state_dict())
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), plain.eval()(x))
        torch.manual_seed(1)
        acting = m.train()(x)
        torch.manual_seed(1)
        assert not torch.equal(acting, plain.train()(x))  # they are attached: they act in training


# ---------------------------------------------------------------- Adaptive Dropout
@pytest.mark.parametrize("w", [0.0, 0.3, 0.8])
def test_adaptive_dropout_layer_mean_variance_and_values(w):
    torch.manual_seed(0)
    x = torch.randn(1, 16, 3, 3).expand(20000, -1, -1, -1)
    y = AdaptiveDropoutLayer(0.5, w).train()(x)
    # y = x·(w + 2(1 − w)·m), m ~ Bernoulli(0.5) per (sample, channel): two values, one per map
    ratio = y / x
    low, high = ratio.isclose(torch.tensor(w)), ratio.isclose(torch.tensor(2 - w))
    assert (low | high).all()
    assert (high.flatten(2).all(-1) | low.flatten(2).all(-1)).all()  # whole feature maps
    n = y.shape[0]
    assert abs(high.float().mean().item() - 0.5) < 4 * 0.5 / math.sqrt(n * 16)
    mean, var = y.mean(0), y.var(0)
    tol = 5 * (1 - w) * x[0].abs() / math.sqrt(n)
    assert ((mean - x[0]).abs() <= tol + 1e-6).all()  # E[y] = x
    if w < 1:
        assert torch.allclose(var, (1 - w) ** 2 * x[0] ** 2, rtol=0.05, atol=1e-6)  # Var[y] = (1 − w)² x²
    assert torch.equal(AdaptiveDropoutLayer(0.5, w).eval()(x), x)
    assert torch.equal(AdaptiveDropoutLayer(0.5, 1.0).train()(x), x)


def schedule_table(iteration, sites, w0=0.3, step=20000):
    """The official rule, written out: the k-th site is off from iteration step·k on."""
    return {s: (1.0 if iteration >= step * k else w0) for k, s in enumerate(sites, start=1)}


def test_adaptive_dropout_schedule_at_the_boundaries_srresnet():
    m = build_model("srresnet", regularizers=[spec("adaptive_dropout")])
    (reg,) = m.regularizers
    at = layers(m, AdaptiveDropoutLayer)
    order = [f"mid{k}" for k in range(1, 17)] + ["last"]
    assert set(at) == set(order) and len(at) == 17  # the paper's 17 sites
    for iteration in [1, 19999, 20000, 20001, 39999, 40000, 319999, 320000, 339999, 340000, 500000]:
        reg.set_iteration(iteration)
        assert {s: layer.weight for s, layer in at.items()} == schedule_table(iteration, order), iteration
    reg.set_iteration(339999)
    assert [s for s, layer in at.items() if layer.weight < 1] == ["last"]


def test_adaptive_dropout_options_and_other_backbones():
    m = build_model("rrdb", num_feat=8, num_block=3, num_grow_ch=4,
                    regularizers=[spec("adaptive_dropout", w0=0.5, step=10, order="deep_first", p=0.2)])
    (reg,) = m.regularizers
    at = layers(m, AdaptiveDropoutLayer)
    order = ["last", "mid3", "mid2", "mid1"]
    assert all(layer.p == 0.2 for layer in at.values())
    for iteration in [9, 10, 19, 20, 39, 40]:
        reg.set_iteration(iteration)
        assert {s: layer.weight for s, layer in at.items()} == schedule_table(iteration, order, 0.5, 10)
    for bad, message in [(dict(p=1.0), r"p=1\.0.*\[0, 1\)"), (dict(w0=1.5), r"w0=1\.5.*\[0, 1\]"),
                         (dict(step=0), "step=0.*positive integer"), (dict(step=2.5), "step=2.5"),
                         (dict(order="random"), "order='random'.*shallow_first, deep_first")]:
        with pytest.raises(ValueError, match=f"regularizers.adaptive_dropout.{message}"):
            build_regularizer(spec("adaptive_dropout", **bad))


# ---------------------------------------------------------------- DropPath
def test_droppath_layer_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    x = torch.rand(4000, 4, 3, 3) + 0.5
    r = 0.3
    y = DropPathLayer(r).train()(x)
    dropped = (y == 0).flatten(1).all(1)
    kept = ~dropped
    assert ((y == 0).flatten(1).any(1) == dropped).all()  # a sample is dropped whole or not at all
    assert torch.allclose(y[kept], x[kept] / (1 - r))
    assert abs(dropped.float().mean().item() - r) < 4 * math.sqrt(r * (1 - r) / 4000)
    assert torch.equal(DropPathLayer(r).eval()(x), x) and torch.equal(DropPathLayer(0.0).train()(x), x)


def test_droppath_rates_over_depth_and_its_site():
    m = build_model("srresnet", num_feat=8, num_block=5, regularizers=[spec("droppath", rate=0.2)])
    rates = {s: layer.rate for s, layer in layers(m, DropPathLayer).items()}
    assert rates == pytest.approx({f"inblock{k}": 0.2 * (k - 1) / 4 for k in range(1, 6)})
    swinir = torch.linspace(0, 0.2, 5).tolist()  # SwinIR's dpr
    assert [rates[f"inblock{k}"] for k in range(1, 6)] == pytest.approx(swinir)
    m = build_model("rrdb", num_feat=8, num_block=3, num_grow_ch=4,
                    regularizers=[spec("droppath", rate=0.999, schedule="constant")]).train()
    torch.manual_seed(0)
    assert {s: layer.rate for s, layer in layers(m, DropPathLayer).items()} == {f"inblock{k}": 0.999 for k in (1, 2, 3)}
    seen = {}
    m.body[2].register_forward_hook(lambda mod, i, o: seen.update(block_in=i[0].clone(), block_out=o.clone()))
    m(torch.rand(2, 3, 8, 8))
    assert torch.equal(seen["block_out"], seen["block_in"])  # a dropped branch: the block passes its input
    for bad, message in [(dict(rate=1.0), r"rate=1\.0"), (dict(schedule="cosine"), "schedule='cosine'")]:
        with pytest.raises(ValueError, match=f"regularizers.droppath.{message}"):
            build_regularizer(spec("droppath", **bad))


# ---------------------------------------------------------------- Simple Align
def numpy_simple_align(features: np.ndarray, w: np.ndarray, b: np.ndarray, lam: float) -> float:
    """REGULARIZERS.md §2 written out in NumPy, pair by pair."""
    pooled = features.mean(axis=(2, 3))
    half = len(pooled) // 2
    u_all, v_all = pooled[:half] - pooled[:half].mean(0), pooled[half:] - pooled[half:].mean(0)

    def reg(u, v):
        return np.mean((u - v) ** 2) + np.mean((np.outer(u, u) - np.outer(v, v)) ** 2)

    def phi(x, wi, bi):
        z = wi * x + bi
        z = np.pi / 2 * (z - z.min()) / (z - z.min()).max()
        return np.sqrt(2) * (np.cos(z) + np.sin(z))

    total = 0.0
    for i in range(half):
        u, v = u_all[i], v_all[i]
        total += reg(u, v) + reg(phi(u, w[i, 0], b[i]), phi(v, w[i, 0], b[i]))
    return lam * total


def test_simple_align_loss_matches_numpy():
    reg = build_regularizer(spec("simple_align", lam=0.7))
    reg.resolve(site_names(2))
    assert reg.views == 2 and reg.tapped_sites == ("last",)
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(6, 16, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    loss = reg.extra_loss(None, None, {"last": feats})
    torch.manual_seed(11)  # the Fourier features' draws, as documented: w (B, 1), then b (B, C)
    w = torch.randn(3, 1, dtype=torch.float64).numpy()
    b = (2 * math.pi * torch.rand(3, 16, dtype=torch.float64)).numpy()
    assert loss.item() == pytest.approx(numpy_simple_align(feats.detach().numpy(), w, b, 0.7), rel=1e-10)
    loss.backward()
    assert feats.grad[:3].abs().sum() > 0 and feats.grad[3:].abs().sum() > 0  # through both views
    same = feats.detach()[:3].repeat(2, 1, 1, 1)
    assert reg.extra_loss(None, None, {"last": same}).item() == 0  # identical views: nothing to align


def hr_batch(n=2, size=64):
    imgs = [im[:size, :size] for _, im in builtin_images("test")[:n]]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def locate(patch, image, scale):
    """Every position (t, l), both multiples of ``scale``, where ``patch`` sits in ``image``."""
    p = patch.shape[-1]
    return {(t, l) for t in range(0, image.shape[-2] - p + 1, scale) for l in range(0, image.shape[-1] - p + 1, scale)
            if torch.equal(image[:, t:t + p, l:l + p], patch)}


def test_realesrgan_views_share_the_crop_and_differ_in_degradation():
    deg = RealESRGANDegradation(4, 32, **{**paper_realesrgan_params(), "backend": "cv2"})
    hr = hr_batch(2, 64)
    g = torch.Generator().manual_seed(3)
    start = g.get_state()
    target, lr = deg.views(hr, g, 2)
    assert target.shape == (4, 3, 32, 32) and lr.shape == (4, 3, 8, 8)
    assert torch.equal(target[:2], target[2:])  # GT repeated, view-major
    assert not torch.equal(lr[:2], lr[2:])
    # Replay the stream: one crop, then each view's own parameters; each view's LR is its own
    # full-size degradation cut where the (shared) target was cut.
    g.set_state(start)
    draw_crop(2, (16, 16), 32, 4, g)
    params = [deg.sample_params(2, g) for _ in range(2)]
    assert params[0]["resize1"] != params[1]["resize1"]  # per-batch choices too: each view its own
    for v, p in enumerate(params):
        full_target, full_lr = deg.apply(hr, p)
        for i in range(2):
            (pos,) = {(t // 4, l // 4) for t, l in locate(target[i], full_target[i], 4)}
            assert torch.equal(lr[2 * v + i], full_lr[i, :, pos[0]:pos[0] + 8, pos[1]:pos[1] + 8])


@pytest.mark.parametrize("deg", [Bicubic(4, gt_patch=32), SimpleMulti(4, 32, **MULTI)], ids=["bicubic", "multi"])
def test_views_of_every_degradation(deg):
    hr = hr_batch(3, 64)
    one = deg(hr, torch.Generator().manual_seed(0))
    same = deg.views(hr, torch.Generator().manual_seed(0), 1)  # one view: the plain call, same draws
    assert all(torch.equal(a, b) for a, b in zip(one, same))
    target, lr = degraded_views(deg, hr, torch.Generator().manual_seed(0), 3)
    assert target.shape == (9, 3, 32, 32) and lr.shape == (9, 3, 8, 8)
    assert torch.equal(target[:3], target[3:6]) and torch.equal(target[:3], target[6:])
    for i in range(3):
        assert locate(target[i], hr[i], 4)  # a crop of the GT patch, on the LR grid
    with pytest.raises(TypeError, match="2 degraded views per GT patch need a srcore.degrade.Degradation"):
        degraded_views(lambda hr, g: (hr, hr), hr, torch.Generator(), 2)


# ---------------------------------------------------------------- resume through the training loop
def settings(**kw) -> TrainSettings:
    base = dict(iterations=12, batch_size=2, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0, periods=(6, 6),
                restart_weights=(1, 0.5), eta_min=1e-7, ema_decay=0.9, seed=0, log_every=1, val_every=100,
                ckpt_every=4, num_workers=0, device="cpu",
                precision="fp32", tf32=False, channels_last=False, compile=False, cuda_graph=True, superbatch=1,
                prefetch=0)
    return TrainSettings(**{**base, **kw})


def run(tmp_path, name, regularizers, degrade, stop_at=None):
    """A tiny training job; with ``stop_at`` it is stopped (state saved) after that iteration.
    Returns the model, its EMA, the logged metrics and the Adaptive Dropout weights of each pass."""
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2, regularizers=regularizers)
    weights = []
    for s, layer in layers(model, AdaptiveDropoutLayer).items():
        layer.register_forward_pre_hook(lambda mod, i, s=s: weights.append((s, mod.weight)) if mod.training else None)
    logged, done = {}, []
    patches = TrainPatches(builtin_images("train")[:2], patch=32, seed=0)
    ema = train(model, patches, degrade, settings(), tmp_path / f"{name}.pt",
                log_metrics=lambda metrics, step: logged.setdefault(step, metrics), on_iteration=done.append,
                should_stop=lambda: stop_at is not None and done[-1] == stop_at)
    return model, ema, logged, weights


def assert_same_weights(a, b):
    for (k, v1), v2 in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_adaptive_dropout_and_simple_align_resume_bit_identically(tmp_path):
    regs = [spec("adaptive_dropout", step=3), spec("simple_align")]
    degrade = SimpleMulti(4, 16, **MULTI)  # random per view, and a crop the views must share
    full, full_ema, full_log, full_w = run(tmp_path, "full", regs, degrade)
    with pytest.raises(Interrupted):
        run(tmp_path, "part", regs, degrade, stop_at=7)
    torch.manual_seed(123)  # resume must restore the global RNG (dropout masks, Fourier features)
    resumed, resumed_ema, resumed_log, resumed_w = run(tmp_path, "part", regs, degrade)
    assert_same_weights(full, resumed), assert_same_weights(full_ema, resumed_ema)
    assert all(full_log[i]["train/loss"] == resumed_log[i]["train/loss"] for i in range(8, 13))
    assert all(0 < m["train/simple_align_loss"] for m in full_log.values())
    # the schedule across the resume: iterations 8..12 as in the uninterrupted job, and as the rule says
    order = ["mid1", "mid2", "last"]
    per_pass = [dict(full_w[3 * i:3 * i + 3]) for i in range(12)]
    assert per_pass == [schedule_table(it, order, 0.3, 3) for it in range(1, 13)]
    assert resumed_w == full_w[3 * 7:]


def test_the_configs_compose_into_a_job():
    from sweeper import build
    from sweeper.compose import compose
    from sweeper.preflight import validate_config
    names = ("adaptive_dropout", "droppath", "simple_align")
    cfg = compose([*TINY, f"regularizer=[{','.join(names)}]"])
    validate_config(cfg)
    specs = {r.name: r.spec() for r in build.model(cfg).regularizers}
    assert {name: specs.get(name) for name in names} == {name: spec(name) for name in names}
