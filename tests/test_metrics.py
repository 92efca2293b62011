"""Tests of srcore.metrics against textbook formulas and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from srcore.metrics import psnr, rgb_to_y, ssim, to_uint8


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A natural image and a distorted copy (noise + a shift of some pixels)."""
    rng = np.random.default_rng(0)
    a = np.ascontiguousarray(skimage.data.astronaut()[100:196, 140:252])  # 96 x 112
    b = np.clip(a.astype(int) + rng.integers(-25, 26, a.shape), 0, 255).astype(np.uint8)
    return a, b


def y_independent(img: np.ndarray) -> np.ndarray:
    # scikit-image's rgb2ycbcr uses the same BT.601 (MATLAB) matrix, on [0, 1] input.
    return rgb2ycbcr(img.astype(np.float64) / 255.0)[..., 0]


def textbook_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / mse)


def skimage_ssim(a: np.ndarray, b: np.ndarray, rgb: bool) -> float:
    return structural_similarity(
        a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        channel_axis=-1 if rgb else None,
    )


# -------------------------------------------------------------------- Y


def test_rgb_to_y_known_values_and_independent():
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    y = rgb_to_y(px)
    assert y.dtype == np.float64 and y.shape == (1, 5)
    np.testing.assert_allclose(y[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-9)
    img = np.random.default_rng(1).integers(0, 256, (20, 30, 3)).astype(np.float64)
    np.testing.assert_allclose(rgb_to_y(img), y_independent(img), atol=1e-9)
    # RGB order, not BGR: a red image is dark in Y, a blue one darker still.
    assert rgb_to_y(px)[0, 2] > rgb_to_y(px)[0, 4]
    with pytest.raises(ValueError):
        rgb_to_y(img[..., 0])


# ------------------------------------------------------------------ PSNR


def test_psnr_matches_textbook_formula(pair):
    a, b = pair
    for crop in (0, 4):
        c = slice(crop, -crop or None)
        assert psnr(a, b, crop_border=crop) == pytest.approx(textbook_psnr(a[c, c], b[c, c]), abs=1e-10)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, (2, 33, 41, 3), dtype=np.uint8)  # uint8 wrap-around would show here
    assert psnr(x, y, 0) == pytest.approx(textbook_psnr(x, y), abs=1e-10)
    # float inputs in [0, 255] give the same number
    assert psnr(x.astype(np.float32), y.astype(np.float64), 0) == pytest.approx(textbook_psnr(x, y), abs=1e-10)


def test_psnr_known_value_constant_offset():
    img = np.random.default_rng(3).integers(0, 246, (40, 40, 3), dtype=np.uint8)
    val = psnr(img + 10, img, crop_border=4)
    assert val == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)
    assert val == pytest.approx(28.130803608679106, abs=1e-9)


def test_psnr_identical_is_inf_and_crop_border_honoured(pair):
    a, b = pair
    assert psnr(a, a, 4) == float("inf")
    assert psnr(a, a.copy(), 0, test_y=True) == float("inf")
    # Changes confined to the 4-pixel border don't count ...
    c = a.copy()
    c[:4] = 0
    c[:, -4:] = 255
    assert psnr(c, a, crop_border=4) == float("inf")
    assert psnr(c, a, crop_border=3) < 40
    # ... and the border is cropped on all four sides.
    base = psnr(b, a, 4)
    d = b.copy()
    d[-4:] = 0
    d[:, :4] = 0
    assert psnr(d, a, 4) == base
    # A change just inside the border does count.
    d[4, 4] = 255 - d[4, 4]
    assert psnr(d, a, 4) < base


def test_psnr_y_channel_vs_independent(pair):
    a, b = pair
    ya, yb = y_independent(a)[4:-4, 4:-4], y_independent(b)[4:-4, 4:-4]
    expected = 10 * math.log10(255**2 / np.mean((ya - yb) ** 2))
    assert psnr(a, b, 4, test_y=True) == pytest.approx(expected, abs=1e-9)
    assert abs(psnr(a, b, 4, test_y=True) - psnr(a, b, 4)) > 0.5  # the two modes differ


def test_psnr_validation(pair):
    a, _ = pair
    with pytest.raises(ValueError) as e:
        psnr(a, a[:-1], 4)
    assert str(a.shape) in str(e.value) and str(a[:-1].shape) in str(e.value)
    with pytest.raises(ValueError):
        psnr(a[..., 0], a[..., 0], 0)
    with pytest.raises(ValueError):
        psnr(a, a, -1)
    with pytest.raises(ValueError):
        psnr(a, a, 48)  # nothing left
    with pytest.raises(ValueError):
        psnr(a.astype(np.int32), a.astype(np.int32), 0)
    nan = a.astype(np.float64)
    nan[50, 50, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        psnr(nan, a, 4)


# ------------------------------------------------------------------ SSIM


def test_ssim_y_matches_skimage(pair):
    a, b = pair
    for crop in (0, 4):
        c = slice(crop, -crop or None)
        expected = skimage_ssim(y_independent(a)[c, c], y_independent(b)[c, c], rgb=False)
        # Same formula and the same 5-pixel 'valid' crop; float64 throughout,
        # so only summation-order rounding differs.
        assert ssim(a, b, crop_border=crop) == pytest.approx(expected, abs=1e-6)
        assert ssim(a, b, crop_border=crop, test_y=True) == ssim(a, b, crop_border=crop)


def test_ssim_rgb_is_channel_mean_and_matches_skimage(pair):
    a, b = pair
    c = slice(4, -4)
    expected = skimage_ssim(a[c, c].astype(np.float64), b[c, c].astype(np.float64), rgb=True)
    got = ssim(a, b, 4, test_y=False)
    assert got == pytest.approx(expected, abs=1e-6)
    per_channel = [skimage_ssim(a[c, c, i].astype(np.float64), b[c, c, i].astype(np.float64), rgb=False) for i in range(3)]
    assert got == pytest.approx(np.mean(per_channel), abs=1e-6)
    assert abs(got - ssim(a, b, 4, test_y=True)) > 1e-3
    # The Gaussian window matters: skimage's default 7x7 uniform window differs.
    uniform = structural_similarity(a[c, c], b[c, c], data_range=255, channel_axis=-1)
    assert abs(got - uniform) > 1e-3


def test_ssim_identical_and_validation(pair):
    a, b = pair
    assert ssim(a, a.copy(), 4) == 1.0
    assert ssim(a, a, 0, test_y=False) == 1.0
    assert 0 < ssim(a, b, 4) < 1
    with pytest.raises(ValueError):
        ssim(a, a[1:], 4)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:18, :18], a[:18, :18], 4)


# -------------------------------------------------------------- to_uint8


def test_to_uint8_numpy():
    x = np.array([[[-0.2, 0.0, 0.5], [1.0, 1.7, 0.1 / 255]], [[2.4 / 255, 2.6 / 255, 0.999]] * 2], dtype=np.float64)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0].tolist() == [[0, 0, 128], [255, 255, 0]]
    assert out[1, 0].tolist() == [2, 3, 255]
    with pytest.raises(ValueError):
        to_uint8(np.zeros((4, 4, 3), np.uint8))  # already uint8: a caller mistake
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.full((2, 2, 3), np.nan))


def test_to_uint8_torch_matches_tensor2img_rule():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    t = torch.rand(3, 5, 7, generator=gen) * 1.4 - 0.2  # some values outside [0, 1]
    expected = (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    out = to_uint8(t)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and np.array_equal(out, expected)
    assert np.array_equal(to_uint8(t[None]), expected)  # batch of one
    assert np.array_equal(to_uint8(t.double().requires_grad_()), expected)
    # CHW tensor -> HWC array: channel 0 is R.
    red = torch.zeros(3, 2, 2)
    red[0] = 1
    assert to_uint8(red)[0, 0].tolist() == [255, 0, 0]
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.full((3, 2, 2), float("nan")))
