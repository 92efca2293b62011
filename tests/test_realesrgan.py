"""The Real-ESRGAN two-stage degradation (srcore.degrade.realesrgan and its steps)."""
import functools
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy import stats
from skimage import data

from srcore.degrade import build_degradation
from srcore.degrade.common import bicubic_down
from srcore.degrade.kernels import KERNEL_TYPES
from srcore.degrade.noise import add_noise, count_levels, poisson_from_levels
from srcore.degrade.realesrgan import RealESRGANDegradation
from srcore.degrade.realesrgan_params import PARAM_NAMES, validate_params
from srcore.degrade.resize import resize
from srcore.degrade.usm import usm_sharp
from tests.degrade_params import paper_geometry, paper_realesrgan_params

ROOT = Path(__file__).resolve().parent.parent
N = 20000
PAPER = {**paper_geometry(), **paper_realesrgan_params()}  # every parameter, the paper's values
PAPER_KERNEL_PROB = tuple(PAPER["kernel_prob"])
USM = dict(radius=PAPER["usm_radius"], weight=PAPER["usm_weight"], threshold=PAPER["usm_threshold"])


def paper_realesrgan(**overrides) -> RealESRGANDegradation:
    """The paper's pipeline, with some parameters changed."""
    return RealESRGANDegradation(**{**PAPER, **overrides})


@functools.lru_cache(maxsize=None)
def _sources():
    return (data.astronaut(), data.coffee(), data.rocket(), data.immunohistochemistry(), data.hubble_deep_field())


def photos(n: int = 2, size: int = 400, seed: int = 0) -> torch.Tensor:
    """n real RGB crops (n, 3, size, size) in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = _sources()[i % 5]
        t, l = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
        out.append(im[t:t + size, l:l + size, :3])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def _binom_ok(count, n, p):
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def _uniform_ok(x, lo, hi):
    return stats.kstest(np.asarray(x, dtype=np.float64), stats.uniform(loc=lo, scale=hi - lo).cdf).pvalue > 1e-4


# ---------------------------------------------------------------- configuration
def test_defaults_are_the_papers():
    c = paper_realesrgan().config()
    assert c["scale"] == 4 and c["gt_patch"] == 128 and c["usm"] is True
    assert (c["usm_radius"], c["usm_weight"], c["usm_threshold"]) == (50, 0.5, 10)
    assert c["usm_on_load"] is True and PARAM_NAMES.index("usm_on_load") == PARAM_NAMES.index("usm_threshold") + 1
    assert c["kernel_list"] == KERNEL_TYPES and c["kernel_prob"] == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert c["kernel_list2"] == KERNEL_TYPES and c["kernel_prob2"] == PAPER_KERNEL_PROB
    assert c["blur_sigma"] == (0.2, 3.0) and c["blur_sigma2"] == (0.2, 1.5)
    assert c["betag_range"] == c["betag_range2"] == (0.5, 4.0) and c["betap_range"] == c["betap_range2"] == (1.0, 2.0)
    assert c["sinc_prob"] == c["sinc_prob2"] == 0.1
    assert c["resize_prob"] == (0.2, 0.7, 0.1) and c["resize_range"] == (0.15, 1.5)
    assert c["resize_prob2"] == (0.3, 0.4, 0.3) and c["resize_range2"] == (0.3, 1.2)
    assert c["gaussian_noise_prob"] == c["gaussian_noise_prob2"] == 0.5
    assert c["noise_range"] == (1.0, 30.0) and c["noise_range2"] == (1.0, 25.0)
    assert c["poisson_scale_range"] == (0.05, 3.0) and c["poisson_scale_range2"] == (0.05, 2.5)
    assert c["gray_noise_prob"] == c["gray_noise_prob2"] == 0.4
    assert c["jpeg_range"] == c["jpeg_range2"] == (30, 95)
    assert c["second_blur_prob"] == 0.8 and c["final_sinc_prob"] == 0.8
    assert c["resize_modes"] == ("area", "bilinear", "bicubic")


def test_the_config_file_holds_the_defaults_and_validates():
    from omegaconf import OmegaConf

    path = ROOT / "conf" / "degradation" / "realesrgan.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # as the sweeper reads it
    params = {k: v for k, v in cfg.items() if k not in ("name", "gt_size")}
    # every parameter but the job's geometry is in the file (the code has no defaults) ...
    assert set(params) == set(PARAM_NAMES) - {"scale", "gt_patch"}
    assert params == paper_realesrgan_params()
    validate_params({**params, "scale": 4, "gt_patch": 128})
    deg = build_degradation("realesrgan", 4, gt_patch=128, **params)
    assert isinstance(deg, RealESRGANDegradation)
    # ... so a missing one is an error, not a silent default
    with pytest.raises(ValueError, match="degradation.sinc_prob is missing"):
        validate_params({k: v for k, v in PAPER.items() if k != "sinc_prob"})


@pytest.mark.parametrize("params,key,shown", [
    (dict(kernel_prob=[0.5, 0.25, 0.12, 0.03, 0.12, 0.03]), "kernel_prob", "0.5"),
    (dict(kernel_list=["iso", "gauss"], kernel_prob=[0.5, 0.5]), "kernel_list", "gauss"),
    (dict(kernel_list2=["iso", "aniso"]), "kernel_prob2", "0.45"),  # lengths differ
    (dict(sinc_prob=1.5), "sinc_prob", "1.5"),
    (dict(second_blur_prob=-0.1), "second_blur_prob", "-0.1"),
    (dict(resize_prob=[0.5, 0.5]), "resize_prob", "0.5"),
    (dict(resize_range2=[1.2, 0.3]), "resize_range2", "1.2"),
    (dict(resize_range=[0.0, 1.5]), "resize_range", "0.0"),
    (dict(blur_sigma=[3.0, 0.2]), "blur_sigma", "3.0"),
    (dict(blur_sigma2=[0.0, 1.5]), "blur_sigma2", "0.0"),
    (dict(noise_range=[-1, 30]), "noise_range", "-1"),
    (dict(jpeg_range=[30, 101]), "jpeg_range", "101"),
    (dict(jpeg_range2=[0, 95]), "jpeg_range2", "0"),
    (dict(jpeg_range=[30.5, 95]), "jpeg_range", "30.5"),
    (dict(scale=0), "scale", "0"),
    (dict(gt_patch=130), "gt_patch", "130"),
    (dict(usm_radius=-5), "usm_radius", "-5"),
    (dict(usm_on_load="yes"), "usm_on_load", "yes"),
    (dict(resize_modes=["area", "lanczos"]), "resize_modes", "lanczos"),
    (dict(backend="gpu"), "backend", "gpu"),
    (dict(gray_noise_prob2="0.4"), "gray_noise_prob2", "0.4"),
    (dict(noise_sigma=[1, 2]), "noise_sigma", "noise_sigma"),  # unknown key
])
def test_validate_params_names_key_and_value(params, key, shown):
    with pytest.raises(ValueError) as err:
        validate_params({**PAPER, **params})
    msg = str(err.value)
    assert key in msg and shown in msg, msg
    with pytest.raises((ValueError, TypeError)):  # TypeError: an unknown keyword
        paper_realesrgan(**params)


def test_validate_params_accepts_valid_settings():
    validate_params(PAPER)
    validate_params({**PAPER, **dict(kernel_list=["iso"], kernel_prob=[1.0], resize_prob=[0, 0, 1],
                                     jpeg_range=[95, 95], noise_range=[0, 0], gt_patch=None, usm=False,
                                     backend="torch")})
    validate_params({**PAPER, "usm_on_load": False})


# ---------------------------------------------------------------- USM
def _usm_reference(img: np.ndarray, radius, weight, threshold) -> np.ndarray:
    """Real-ESRGAN's USMSharp, written with OpenCV: HxWxC float32 in [0, 1]."""
    k = radius + 1 if radius % 2 == 0 else radius
    kernel = cv2.getGaussianKernel(k, 0)
    kernel2d = (kernel @ kernel.T).astype(np.float32)
    blur = cv2.filter2D(img, -1, kernel2d, borderType=cv2.BORDER_REFLECT_101)
    residual = img - blur
    mask = (np.abs(residual) * 255 > threshold).astype(np.float32)
    soft = cv2.filter2D(mask, -1, kernel2d, borderType=cv2.BORDER_REFLECT_101)
    sharp = np.clip(img + weight * residual, 0, 1)
    return soft * sharp + (1 - soft) * img


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_usm_matches_an_opencv_reference(backend):
    hr = photos(2, 160, seed=3)
    out = usm_sharp(hr, **USM, backend=backend)
    assert out.shape == hr.shape and out.min() >= 0 and out.max() <= 1
    for i in range(2):
        ref = _usm_reference(hr[i].permute(1, 2, 0).numpy(), **USM)
        diff = np.abs(out[i].permute(1, 2, 0).numpy() - ref)
        assert diff.max() < 2e-3 and diff.mean() < 1e-5, (diff.max(), diff.mean())
    # it does sharpen: more high-frequency energy than the input
    lap = lambda t: (t[..., 1:-1, 1:-1] * 4 - t[..., :-2, 1:-1] - t[..., 2:, 1:-1] - t[..., 1:-1, :-2]
                     - t[..., 1:-1, 2:]).pow(2).mean()
    assert lap(out) > 1.2 * lap(hr)


def test_hr_target_is_the_sharpened_gt_or_the_gt():
    # usm_on_load=False: the official per-batch USM of the crops
    hr = photos(2, 256, seed=1)
    for usm in (True, False):
        deg = paper_realesrgan(usm=usm, usm_on_load=False)
        params = deg.sample_params(2, torch.Generator().manual_seed(7))
        target, lr = deg.apply(hr, params)
        want = usm_sharp(hr, **USM) if usm else hr
        assert torch.equal(target, want)
        assert lr.shape == (2, 3, 64, 64)
        t_crop, l_crop = deg.paired_crop(target, lr, params)
        assert t_crop.shape == (2, 3, 128, 128) and l_crop.shape == (2, 3, 32, 32)
        # the crops are aligned: LR patch (top, left) <-> HR patch (4 top, 4 left)
        u = params["crop"]
        tops = (u[:, 0] * (64 - 32 + 1)).long().tolist()
        lefts = (u[:, 1] * (64 - 32 + 1)).long().tolist()
        for i, (t, l) in enumerate(zip(tops, lefts)):
            assert torch.equal(t_crop[i], want[i, :, 4 * t:4 * t + 128, 4 * l:4 * l + 128])
            assert torch.equal(l_crop[i], lr[i, :, t:t + 32, l:l + 32])
        # __call__ is sample_params + apply + paired_crop
        a, b = deg(hr, torch.Generator().manual_seed(7))
        assert torch.equal(a, t_crop) and torch.equal(b, l_crop)


def _u8(t: torch.Tensor) -> np.ndarray:
    return (t * 255).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def test_prepare_images_is_usm_of_the_whole_image():
    images = [("astronaut", data.astronaut()), ("coffee", data.coffee()), ("rocket", data.rocket())]
    deg = paper_realesrgan()
    prepared = deg.prepare_images(images)
    assert [n for n, _ in prepared] == [n for n, _ in images]
    for (_, im), (_, out) in zip(images, prepared):
        assert out.dtype == np.uint8 and out.shape == im.shape
        x = torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255
        assert np.array_equal(out, _u8(usm_sharp(x, **USM))), np.abs(out.astype(int) - _u8(usm_sharp(x, **USM))).max()
        assert not np.array_equal(out, im)
    # nothing to do without USM or with per-batch USM
    for kw in (dict(usm=False), dict(usm_on_load=False)):
        same = paper_realesrgan(**kw).prepare_images(images)
        assert all(a is b for (_, a), (_, b) in zip(same, images))
    with pytest.raises(ValueError, match="uint8"):
        deg.prepare_images([("float", images[0][1].astype(np.float32))])


@pytest.mark.parametrize("flip", [False, True])
def test_a_crop_of_the_prepared_image_is_usm_of_the_crop_away_from_its_border(flip):
    im = data.coffee()
    prepared = paper_realesrgan().prepare_images([("coffee", im)])[0][1]
    t, l, size = 60, 90, 300
    crop, pcrop = im[t:t + size, l:l + size], prepared[t:t + size, l:l + size]
    if flip:  # a horizontal flip commutes with the symmetric kernel and reflect-101 borders
        crop, pcrop = crop[:, ::-1], pcrop[:, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255
    diff = np.abs(_u8(usm_sharp(x, **USM)).astype(int) - pcrop.astype(int))
    yy, xx = np.mgrid[0:size, 0:size]
    dist = np.minimum(np.minimum(yy, xx), np.minimum(size - 1 - yy, size - 1 - xx))
    # the blur reaches 25 px and the soft mask blurs the thresholded residual by 25 px more:
    # from 50 px inside the two agree (up to rounding); 26..49 px inside, by a few levels at most
    assert diff[dist >= 50].max() <= 1
    band = diff[(dist >= 26) & (dist < 50)]
    assert band.max() <= 4 and band.mean() < 0.05, (band.max(), band.mean())
    assert diff[dist < 25].max() > 4  # the border band really differs (real context vs reflection)


def test_usm_on_load_apply_does_not_sharpen_again():
    hr = photos(2, 256, seed=1)
    deg = paper_realesrgan()  # usm=True, usm_on_load=True
    params = deg.sample_params(2, torch.Generator().manual_seed(7))
    target, lr = deg.apply(hr, params)
    assert torch.equal(target, hr)
    t_crop, l_crop = deg.paired_crop(target, lr, params)
    u = params["crop"]
    tops = (u[:, 0] * (64 - 32 + 1)).long().tolist()
    lefts = (u[:, 1] * (64 - 32 + 1)).long().tolist()
    for i, (t, l) in enumerate(zip(tops, lefts)):
        assert torch.equal(t_crop[i], hr[i, :, 4 * t:4 * t + 128, 4 * l:4 * l + 128])
    # the LR is the per-batch pipeline's LR of the (already sharpened) input, without USM
    _, lr_off = paper_realesrgan(usm=False).apply(hr, params)
    assert torch.equal(lr, lr_off)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_cv2_and_torch_resize_agree(mode):
    x = photos(3, 200, seed=4)
    for kw in (dict(scale_factor=1.37), dict(scale_factor=0.41), dict(scale_factor=0.5), dict(scale_factor=1.5),
               dict(scale_factor=1.0017), dict(scale_factor=0.9991), dict(size=(67, 93)), dict(size=(310, 250))):
        a, b = resize(x, mode=mode, backend="cv2", **kw), resize(x, mode=mode, backend="torch", **kw)
        assert a.shape == b.shape, (kw, a.shape, b.shape)
        diff = (a - b).abs() * 255  # measured on photographs: max ~0.005 levels, mean ~1e-4
        assert diff.max() < 0.02 and diff.mean() < 1e-3, (kw, float(diff.max()), float(diff.mean()))
    # "area" stays on torch (adaptive average pooling), so the backends are identical there
    assert torch.equal(resize(x, scale_factor=1.37, mode="area", backend="cv2"),
                       resize(x, scale_factor=1.37, mode="area", backend="torch"))


# ---------------------------------------------------------------- distributions (no image ops)
@pytest.fixture(scope="module")
def many():
    return paper_realesrgan().sample_params(N, torch.Generator().manual_seed(11))


def test_per_sample_kernel_distributions(many):
    for key, sigma in (("kernel1", (0.2, 3.0)), ("kernel2", (0.2, 1.5))):
        k = many[key]
        counts = torch.bincount(k["type"], minlength=6).numpy()
        assert stats.chisquare(counts, np.array(PAPER_KERNEL_PROB) * N).pvalue > 1e-4, (key, counts)
        assert _uniform_ok(k["sigma_x"].numpy(), *sigma), key
        aniso = np.isin(k["type"].numpy(), [1, 3, 5])
        assert _uniform_ok(k["sigma_y"].numpy()[aniso], *sigma), key
        assert _binom_ok(int(k["sinc"].sum()), N, 0.1), key
    assert _binom_ok(int(many["blur2"].sum()), N, 0.8)
    assert _binom_ok(int(many["final_sinc"]["on"].sum()), N, 0.8)
    om = many["final_sinc"]["omega"].double().numpy()
    assert _uniform_ok(om, math.pi / 3, math.pi)


def test_per_sample_noise_and_jpeg_distributions(many):
    for key, sig, pois in (("noise1", (1, 30), (0.05, 3.0)), ("noise2", (1, 25), (0.05, 2.5))):
        p = many[key]
        assert _binom_ok(int(p["gaussian"].sum()), N, 0.5), key
        assert _binom_ok(int(p["gray"].sum()), N, 0.4), key
        assert _uniform_ok(p["sigma"].numpy(), *sig), key
        assert _uniform_ok(p["poisson_scale"].numpy(), *pois), key
        # independent choices
        both = int((p["gaussian"] & p["gray"]).sum())
        assert _binom_ok(both, N, 0.2), key
    for key in ("jpeg1", "jpeg2"):
        q = many[key]
        assert q.dtype == torch.int64 and q.min() == 30 and q.max() == 95  # both ends hit
        counts = torch.bincount(q - 30, minlength=66).numpy()
        assert len(counts) == 66 and stats.chisquare(counts).pvalue > 1e-4
    assert many["crop"].shape == (N, 2) and _uniform_ok(many["crop"][:, 0].numpy(), 0, 1)


def test_per_batch_resize_and_order_distributions():
    deg = paper_realesrgan()
    g = torch.Generator().manual_seed(12)
    batches = [deg.sample_params(1, g) for _ in range(3000)]
    m = len(batches)
    for key, probs, (lo, hi) in (("resize1", (0.2, 0.7, 0.1), (0.15, 1.5)),
                                 ("resize2", (0.3, 0.4, 0.3), (0.3, 1.2))):
        kinds = [b[key]["type"] for b in batches]
        for kind, prob in zip(("up", "down", "keep"), probs):
            assert _binom_ok(kinds.count(kind), m, prob), (key, kind, kinds.count(kind))
        up = [b[key]["scale"] for b in batches if b[key]["type"] == "up"]
        down = [b[key]["scale"] for b in batches if b[key]["type"] == "down"]
        assert _uniform_ok(up, 1, hi) and _uniform_ok(down, lo, 1), key
        assert all(b[key]["scale"] == 1 for b in batches if b[key]["type"] == "keep")
        modes = [b[key]["mode"] for b in batches]
        for mode in ("area", "bilinear", "bicubic"):
            assert _binom_ok(modes.count(mode), m, 1 / 3), (key, mode)
    order = [b["final_order"] for b in batches]
    assert _binom_ok(order.count("jpeg_first"), m, 0.5)
    assert set(order) == {"jpeg_first", "resize_sinc_first"}
    fm = [b["final_mode"] for b in batches]
    assert _binom_ok(fm.count("bicubic"), m, 1 / 3)


def test_sample_params_uses_a_fixed_amount_of_the_stream():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    paper_realesrgan().sample_params(8, g1)
    paper_realesrgan(kernel_list=["iso"], kernel_prob=[1.0], sinc_prob=0.9, second_blur_prob=0.0,
                          resize_prob=[0, 0, 1], final_sinc_prob=1.0, jpeg_range=[95, 95]).sample_params(8, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


# ---------------------------------------------------------------- noise
def _noise_params(n, gaussian, sigma=10.0, scale=1.0, gray=False):
    return {"gaussian": torch.full((n,), gaussian), "sigma": torch.full((n,), float(sigma)),
            "poisson_scale": torch.full((n,), float(scale)), "gray": torch.full((n,), gray)}


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_gaussian_noise_level_and_grey(backend):
    x = torch.full((2, 3, 512, 512), 0.5)
    g = torch.Generator().manual_seed(0)
    for sigma in (5.0, 20.0):
        out = add_noise(x, _noise_params(2, True, sigma), g, backend)
        std = float((out - 0.5).double().std())
        # 1.5M samples: the std is known to ~0.06 %, so this tells sigma / 255 from sigma / 256
        assert abs(std - sigma / 255) < 0.003 * sigma / 255, (sigma, std * 255)
        assert abs(float(out.double().mean()) - 0.5) < 0.001
        # colour noise: channels independent
        c = np.corrcoef((out[0] - 0.5).reshape(3, -1).numpy())
        assert np.abs(c[np.triu_indices(3, 1)]).max() < 0.01
    x = x[..., :128, :128]
    grey = add_noise(x, _noise_params(2, True, 10.0, gray=True), g, backend)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 0], grey[:, 2])
    assert not torch.equal(grey[0], grey[1])  # but independent between samples
    assert abs(float((grey - 0.5).std()) - 10 / 255) < 0.02 * 10 / 255
    # per-sample sigma and type
    p = _noise_params(2, True, 5.0)
    p["sigma"][1] = 25.0
    out = add_noise(x, p, g, backend)
    s0, s1 = float((out[0] - 0.5).std()), float((out[1] - 0.5).std())
    assert abs(s0 * 255 - 5) < 0.2 and abs(s1 * 255 - 25) < 0.6


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_poisson_noise_variance_scales_with_intensity(backend):
    # a ramp holding all 256 levels: vals = 256, so var(noise) = level / 255 / 256 * scale^2
    levels = torch.arange(256).repeat_interleave(4)  # 1024 columns
    img = (levels.float() / 255).view(1, 1, 1, -1).expand(2, 3, 256, -1).contiguous()
    scale = 0.5
    out = add_noise(img, _noise_params(2, False, scale=scale), torch.Generator().manual_seed(1), backend)
    noise = (out - img)[..., 40:-40].double()  # away from the clamps at 0 and 1
    lv = img[..., 40:-40].double()
    bins = [(30, 60), (100, 130), (170, 200)]
    for lo, hi in bins:
        sel = (lv >= lo / 255) & (lv < hi / 255)
        mean_level = float(lv[sel].mean())
        var = float(noise[sel].var())
        want = mean_level / 256 * scale**2
        assert abs(var - want) < 0.05 * want, (lo, var, want)
        assert abs(float(noise[sel].mean())) < 0.05 * math.sqrt(want)
    # grey Poisson noise: identical channels
    grey = add_noise(img, _noise_params(2, False, scale=scale, gray=True), torch.Generator().manual_seed(1), backend)
    assert torch.equal(grey[:, 0] - img[:, 0], grey[:, 1] - img[:, 1])
    # few levels -> few counts: a 3-level image uses vals = 2^ceil(log2(3)) = 4, much stronger noise
    u = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    three = torch.where(u < 0.3, 51 / 255, torch.where(u < 0.6, 153 / 255, 204 / 255))
    assert int(count_levels((three * 255).round())[0]) == 3
    out = add_noise(three, _noise_params(1, False, scale=0.1), torch.Generator().manual_seed(3), backend)
    sel = (three - 153 / 255).abs() < 1e-6
    var = float((out - three)[sel].double().var())
    want = 0.6 / 4 * 0.1**2
    assert abs(var - want) < 0.1 * want, (var, want)


def test_inverse_cdf_poisson_sampler_is_poisson():
    rng = torch.Generator().manual_seed(4)
    for level, vals in ((3, 256), (1, 1), (200, 256), (77, 16), (0, 256), (255, 128)):
        lam = level * vals / 255
        u = torch.rand(60000, generator=rng, dtype=torch.float64).numpy()
        x = poisson_from_levels(np.full(60000, level), vals, u)
        if lam == 0:
            assert (x == 0).all()
            continue
        lo, hi = int(max(0, lam - 4 * math.sqrt(lam))), int(lam + 4 * math.sqrt(lam)) + 2
        edges = np.arange(lo, hi + 1)
        obs = np.array([(x < lo).sum()] + [(x == k).sum() for k in edges[:-1]] + [(x >= hi).sum()])
        p = np.concatenate([[stats.poisson.cdf(lo - 1, lam)], stats.poisson.pmf(edges[:-1], lam),
                            [stats.poisson.sf(hi - 1, lam)]])
        keep = p * 60000 > 5
        chi = stats.chisquare(obs[keep], p[keep] / p[keep].sum() * obs[keep].sum())
        assert chi.pvalue > 1e-4, (level, vals, chi)


# ---------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def hr400():
    return photos(2, 400, seed=0)


def test_pipeline_shapes_levels_and_seeds(hr400):
    deg = paper_realesrgan()
    target, lr = deg(hr400, torch.Generator().manual_seed(0))
    assert target.shape == (2, 3, 128, 128) and lr.shape == (2, 3, 32, 32)
    assert target.dtype == lr.dtype == torch.float32
    assert lr.min() >= 0 and lr.max() <= 1 and torch.equal(lr, (lr * 255).round() / 255)
    t2, l2 = deg(hr400, torch.Generator().manual_seed(0))
    assert torch.equal(target, t2) and torch.equal(lr, l2)
    t3, l3 = deg(hr400, torch.Generator().manual_seed(1))
    assert not torch.equal(lr, l3)


def test_resuming_the_generator_reproduces_the_next_batch(hr400):
    deg = paper_realesrgan()
    g = torch.Generator().manual_seed(42)
    deg(hr400, g)
    state = g.get_state()
    want = [deg(hr400, g) for _ in range(2)]
    fresh = torch.Generator()
    fresh.set_state(state)
    got = [deg(hr400, fresh) for _ in range(2)]
    for (a, b), (c, d) in zip(want, got):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_full_size_without_gt_patch_and_other_scales():
    hr = photos(2, 96, seed=2)
    target, lr = paper_realesrgan(gt_patch=None)(hr, torch.Generator().manual_seed(0))
    assert target.shape == (2, 3, 96, 96) and lr.shape == (2, 3, 24, 24)
    target, lr = paper_realesrgan(scale=2, gt_patch=64)(hr, torch.Generator().manual_seed(0))
    assert target.shape == (2, 3, 64, 64) and lr.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="smaller than gt_patch"):
        paper_realesrgan()(hr, torch.Generator().manual_seed(0))


def _hf(x: torch.Tensor) -> torch.Tensor:
    """Per-sample high-frequency energy (mean squared finite differences)."""
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean(dim=(1, 2, 3)) + \
        ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean(dim=(1, 2, 3))


def test_lr_is_degraded_relative_to_bicubic():
    hr = photos(6, 256, seed=5)
    quiet = dict(noise_range=(0, 0), poisson_scale_range=(0, 0), noise_range2=(0, 0), poisson_scale_range2=(0, 0))
    noisy = dict(blur_sigma=(0.2, 0.2), sinc_prob=0, second_blur_prob=0, final_sinc_prob=0, resize_prob=(0, 0, 1),
                 resize_prob2=(0, 0, 1), jpeg_range=(95, 95), jpeg_range2=(95, 95), gaussian_noise_prob=1,
                 gaussian_noise_prob2=1, noise_range=(20, 25), noise_range2=(20, 25))
    ratios = {}
    for name, kw in (("default", {}), ("quiet", quiet), ("noisy", noisy)):
        deg = paper_realesrgan(**kw)
        g = torch.Generator().manual_seed(9)
        r, diffs = [], []
        for _ in range(3):
            target, lr = deg(hr, g)
            clean = (bicubic_down(target, 4).clamp(0, 1) * 255).round() / 255
            r.append(_hf(lr) / _hf(clean))
            diffs.append((lr - clean).abs().mean(dim=(1, 2, 3)) * 255)
        ratios[name] = torch.cat(r)
        assert torch.cat(diffs).mean() > 4, name  # far from the clean bicubic LR
    assert ratios["quiet"].median() < 0.7  # blur and resizing: blurrier
    assert (ratios["noisy"] > 1.15).all() and ratios["noisy"].median() > 1.8  # noise: noisier


def test_backends_agree_when_noise_is_off(hr400):
    quiet = dict(noise_range=(0, 0), poisson_scale_range=(0, 0), noise_range2=(0, 0), poisson_scale_range2=(0, 0))
    a, b = paper_realesrgan(**quiet), paper_realesrgan(backend="torch", **quiet)
    for seed in range(3):
        p = a.sample_params(2, torch.Generator().manual_seed(seed))
        ta, la = a.apply(hr400, p)
        tb, lb = b.apply(hr400, p)
        assert (ta - tb).abs().max() < 1e-5
        # only the JPEG codecs differ (PyTorch's is within ~0.4 levels of libjpeg)
        assert float((la - lb).abs().mean()) * 255 < 1.5


def test_params_on_the_generator_device_and_apply_is_deterministic(hr400):
    deg = paper_realesrgan()
    g = torch.Generator().manual_seed(0)
    p = deg.sample_params(2, g)
    assert p["kernel1"]["sigma_x"].device == torch.device("cpu") and isinstance(p["seed"], int)
    a = deg.apply(hr400, p)
    b = deg.apply(hr400, p)
    assert torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="drawn for 2 samples"):
        deg.apply(hr400[:1], p)
