"""The extension guide (docs/extending.md), tried: each kind of entry is added as the guide says
(one module's worth of code + one config file), then composed, pre-flighted and built the way a
job does. The toy entries live in this file and in a copy of conf/, and are removed afterwards."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from srcore.degrade import DEGRADATIONS, Degradation
from srcore.degrade.common import bicubic_down, paired_random_crop, quantize
from srcore.evaluation import SUITES, EvalCase, Suite, evaluate_suite
from srcore.models import BACKBONES, Backbone, build_model, load_model, register_backbone, save_weights
from srcore.regularizers import REGULARIZERS, Regularizer, register_regularizer
from srcore.regularizers.sites import site_names
from srcore.train import train
from sweeper import build
from sweeper.compose import compose
from sweeper.preflight import PreflightError, validate_config
from tests.conftest import ROOT, TINY


# --- "Add a backbone" ------------------------------------------------------------------------
class TinyNet(Backbone):
    """conv_first -> num_block residual blocks -> pixel shuffle -> conv_last, with the usual sites."""

    SCALES = (2, 4)

    @classmethod
    def site_names(cls, num_block: int, upscale: int) -> tuple[str, ...]:
        return site_names(num_block, num_up=1)

    def __init__(self, num_feat: int = 8, num_block: int = 2, upscale: int = 4):
        super().__init__()
        self.check_scale(upscale)
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(_Block(num_feat) for _ in range(num_block)))
        self.upconv = nn.Conv2d(num_feat, num_feat * upscale * upscale, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(upscale)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)
        self.init_sites(num_block, upscale)

    def forward(self, x):
        s = self.sites
        out = s["first"](self.conv_first(x))
        for k, block in enumerate(self.body, start=1):
            out = s[f"b{k}"](block(out))
        out = s["up1"](self.shuffle(self.upconv(out)))
        return self.conv_last(s["last"](s["hr"](out)))


class _Block(nn.Module):
    def __init__(self, num_feat: int):
        super().__init__()
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.site = nn.Identity()  # the inblock<k> site: parameter-free, so keys never change

    def forward(self, x):
        return x + self.site(torch.relu(self.conv(x)))


# --- "Add a regulariser" ---------------------------------------------------------------------
class FeatureDecay(Regularizer):
    """A toy: an L2 penalty on the output of one tapped site, weight growing with the iteration."""

    name = "feature_decay"

    def __init__(self, site: str, weight: float):
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"regularizers.feature_decay.weight={weight!r} must be >= 0")
        self.site, self.weight, self.iteration = site, float(weight), 0
        self.tapped_sites = (site,)

    def settings(self) -> dict:
        return {"site": self.site, "weight": self.weight}

    def resolve(self, sites) -> frozenset[str]:
        if self.site not in sites:
            raise ValueError(f"regularizers.feature_decay.site={self.site!r} is not a site; allowed: {', '.join(sites)}")
        return frozenset()  # taps a site, puts no module there

    def set_iteration(self, iteration: int) -> None:
        self.iteration = iteration

    def extra_loss(self, sr, hr, features):
        return self.weight * self.iteration * features[self.site].pow(2).mean()


# --- "Add a training degradation" ------------------------------------------------------------
class BicubicNoise(Degradation):
    """A toy: bicubic down, then Gaussian noise of a fixed sigma (in 8-bit levels)."""

    def __init__(self, scale: int, gt_patch: int | None = None, sigma: float = 0.0):
        super().__init__(scale, gt_patch)
        self.sigma = sigma

    @classmethod
    def validate(cls, params: dict) -> None:
        if not 0 <= params["sigma"] <= 255:
            raise ValueError(f"degradation.sigma={params['sigma']!r} must be in [0, 255]")

    def __call__(self, hr, g, crop=None):
        lr = bicubic_down(hr, self.scale)
        lr = quantize(lr + torch.randn(lr.shape, generator=g, device=g.device) * self.sigma / 255)
        return paired_random_crop(hr, lr, self.gt_patch, self.scale, g, crop)


# --- "Add an evaluation suite" ---------------------------------------------------------------
class ShiftedSuite(Suite):
    """A toy: each HR image's LR is its bicubic down-scale, once as is and once shifted by a pixel."""

    def __init__(self, test_sets, scale: int):
        self.test_sets, self.scale = test_sets, scale

    def __iter__(self):
        for set_name, images in self.test_sets.items():
            for name, hr in images:
                h, w = (s - s % self.scale for s in hr.shape[:2])
                hr = hr[:h, :w]
                x = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255
                lr = (quantize(bicubic_down(x, self.scale))[0].permute(1, 2, 0) * 255).round().byte().numpy()
                yield EvalCase(set_name, name, "as-is", lr, hr)
                yield EvalCase(set_name, name, "shifted", np.roll(lr, 1, axis=1), hr)


@pytest.fixture
def conf_with_toys(tmp_path):
    """A copy of conf/ with one config file per toy entry, and the toys registered."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "backbone" / "tinynet.yaml").write_text("name: tinynet\nnum_feat: 8\nnum_block: 2\ndropout_p: 0.5\n")
    (conf / "regularizer" ).mkdir(exist_ok=True)
    (conf / "regularizer" / "feature_decay.yaml").write_text(
        "# @package regularizers.feature_decay\nsite: last\nweight: 1.0e-3\n")
    (conf / "degradation" / "bicubic_noise.yaml").write_text("name: bicubic_noise\ngt_size: null\nsigma: 5.0\n")
    register_backbone("tinynet")(TinyNet)
    register_regularizer(FeatureDecay)
    DEGRADATIONS["bicubic_noise"] = BicubicNoise
    SUITES["shifted"] = ShiftedSuite
    yield conf
    BACKBONES.pop("tinynet")
    REGULARIZERS.pop("feature_decay")
    DEGRADATIONS.pop("bicubic_noise")
    SUITES.pop("shifted")


def test_a_new_backbone_regulariser_and_degradation_compose_check_and_train(conf_with_toys, tmp_path):
    overrides = [*TINY, "backbone=tinynet", "regularizer=[dropout,feature_decay]", "degradation=bicubic_noise",
                 "dropout.position=b1", "train.iterations=4"]
    cfg = compose(overrides, config_dir=conf_with_toys)
    validate_config(cfg)
    for bad, message in [("dropout.position=b3", "b1..b2"), ("regularizers.feature_decay.site=nowhere", "nowhere"),
                         ("degradation.sigma=300", "sigma=300"), ("scale=3", r"allowed: \(2, 4\)")]:
        with pytest.raises(PreflightError, match=message):
            validate_config(compose([*overrides, bad], config_dir=conf_with_toys))

    model = build.model(cfg)
    assert [r.name for r in model.regularizers] == ["dropout", "feature_decay"]
    assert isinstance(model.site_modules()["b1"], nn.Dropout2d)
    degrade = build.degradation(cfg)
    losses = []
    train(model, build.train_patches(cfg, degrade), degrade, build.train_settings(cfg), tmp_path / "ckpt.pt",
          log_metrics=lambda metrics, step: losses.append(metrics.get("train/feature_decay_loss")))
    assert any(v is not None and v > 0 for v in losses)

    save_weights(model, tmp_path / "model.pt")
    rebuilt = load_model(tmp_path / "model.pt")
    assert type(rebuilt) is TinyNet and rebuilt.model_args == model.model_args
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(rebuilt(x), model.eval()(x))


def test_a_new_evaluation_suite_is_scored_by_the_shared_loop(conf_with_toys):
    cfg = compose(TINY, config_dir=conf_with_toys)
    suite = SUITES["shifted"](build.test_sets(cfg), cfg.scale)
    model = build_model("tinynet", upscale=4)
    rows, means = evaluate_suite(model, suite, crop_border=cfg.scale)
    assert {r["degradation"] for r in rows} == {"as-is", "shifted"}
    assert set(means) == {f"builtin/{d}/{m}" for d in ("as-is", "shifted") for m in ("psnr", "psnr_y", "ssim_y")}
