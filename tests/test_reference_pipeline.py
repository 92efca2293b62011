"""Sanity of the per-image Real-ESRGAN reference (the speed baseline of benchmarks/bench_degradation.py)."""
import math

import cv2
import numpy as np
import pytest

from benchmarks import reference_pipeline as ref


@pytest.fixture(scope="module")
def photo():
    """A 200x200 float32 RGB crop of a real photograph (skimage's astronaut)."""
    import skimage.data
    return skimage.data.astronaut()[100:300, 150:350].astype(np.float32) / 255


@pytest.mark.parametrize("size", [7, 13, 21])
def test_kernels_are_normalised_and_point_symmetric(size):
    kernels = [ref.bivariate_gaussian(size, 1.5, 0.7, 0.6),
               ref.bivariate_generalized_gaussian(size, 1.5, 0.7, -0.4, 0.6),
               ref.bivariate_generalized_gaussian(size, 2.0, 2.0, 0.0, 3.5),
               ref.bivariate_plateau(size, 1.5, 0.7, 1.2, 1.5),
               ref.circular_lowpass_kernel(np.pi / 4, size)]
    for k in kernels:
        assert k.shape == (size, size) and k.dtype == np.float32
        assert np.isfinite(k).all()
        assert k.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-7)  # correlation == convolution


def test_random_kernels_are_normalised():
    rng = np.random.default_rng(0)
    pipe = ref.ReferenceRealESRGAN()
    for _ in range(60):
        for stage in (pipe.stage1, pipe.stage2):
            k = pipe.blur_kernel(rng, stage)
            assert k.shape[0] == k.shape[1] and k.shape[0] in range(7, 22, 2)
            assert k.sum() == pytest.approx(1.0, abs=1e-5) and np.isfinite(k).all()
        s = pipe.final_sinc_kernel(rng)
        assert s is None or s.sum() == pytest.approx(1.0, abs=1e-5)


def test_gaussian_kernel_formulas():
    # isotropic: the outer product of 1-D Gaussians
    g = cv2.getGaussianKernel(21, 2.0).astype(np.float64)
    np.testing.assert_allclose(ref.bivariate_gaussian(21, 2.0, 2.0, 0.0), g @ g.T, atol=1e-6)
    # rotation by pi/2 swaps the axes
    np.testing.assert_allclose(ref.bivariate_gaussian(15, 2.5, 0.8, math.pi / 2),
                               ref.bivariate_gaussian(15, 2.5, 0.8, 0.0).T, atol=1e-6)
    # generalized with beta = 1 is the Gaussian; plateau decays as 1 / (1 + q^beta)
    np.testing.assert_allclose(ref.bivariate_generalized_gaussian(15, 2.5, 0.8, 0.3, 1.0),
                               ref.bivariate_gaussian(15, 2.5, 0.8, 0.3), atol=1e-6)
    p = ref.bivariate_plateau(7, 1.0, 1.0, 0.0, 1.0)
    assert p[3, 4] / p[3, 3] == pytest.approx(1 / 2, rel=1e-5)


def test_sinc_centre_is_the_limit():
    k = ref.circular_lowpass_kernel(np.pi / 3, 11).astype(np.float64)
    # the centre value continues the radial profile (no hole / spike at r = 0)
    c = 5
    assert k[c, c] > k[c, c + 1] > 0
    assert k[c, c] / k.max() == 1.0


def test_usm_sharp(photo):
    out = ref.usm_sharp(photo)
    assert out.shape == photo.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, photo)
    flat = np.full((64, 64, 3), 0.4, np.float32)
    np.testing.assert_allclose(ref.usm_sharp(flat), flat, atol=1e-6)


def test_noise_and_jpeg(photo):
    rng = np.random.default_rng(1)
    for fn, strength in ((ref.gaussian_noise, 20.0), (ref.poisson_noise, 2.0)):
        colour = fn(rng, photo, strength, gray=False)
        grey = fn(rng, photo, strength, gray=True)
        for out in (colour, grey):
            assert out.shape == photo.shape and out.dtype == np.float32
            assert 0 <= out.min() and out.max() <= 1 and not np.allclose(out, photo)
        # grey noise: the same offset on every channel (away from the clipped ends)
        d = grey - photo
        inside = ((grey > 0) & (grey < 1)).all(axis=2)
        np.testing.assert_allclose(d[inside][:, 0], d[inside][:, 1], atol=1e-5)
    j = ref.jpeg(photo, 30)
    assert j.shape == photo.shape and j.dtype == np.float32
    np.testing.assert_array_equal(np.round(j * 255), j * 255)
    assert 0.005 < np.abs(j - photo).mean() < 0.05


def test_pipeline_shapes_levels_and_determinism(photo):
    pipe = ref.ReferenceRealESRGAN(scale=4, gt_patch=64)
    images = [photo, photo[:, ::-1], photo[::-1]]
    hr, lr = pipe(images, np.random.default_rng(7))
    assert hr.shape == (3, 64, 64, 3) and lr.shape == (3, 16, 16, 3)
    assert hr.dtype == lr.dtype == np.float32
    assert 0 <= lr.min() and lr.max() <= 1
    np.testing.assert_array_equal(np.round(lr * 255), lr * 255)  # 8-bit levels
    hr2, lr2 = pipe(images, np.random.default_rng(7))
    np.testing.assert_array_equal(hr, hr2)
    np.testing.assert_array_equal(lr, lr2)
    hr3, lr3 = pipe(images, np.random.default_rng(8))
    assert not np.array_equal(lr, lr3)


def test_many_draws_cover_every_branch(photo):
    # a small image keeps this fast; 40 draws exercise up/down/keep, both noises and both orders
    pipe = ref.ReferenceRealESRGAN(scale=4, gt_patch=32)
    rng = np.random.default_rng(3)
    small = photo[:96, :96]
    for _ in range(40):
        hr, lr = pipe.degrade_one(small, rng)
        assert hr.shape == (32, 32, 3) and lr.shape == (8, 8, 3) and np.isfinite(lr).all()


def test_paired_crop_is_aligned(photo):
    # with (almost) every degradation switched off, the LR is the area-downsampled HR target
    pipe = ref.ReferenceRealESRGAN(
        scale=4, gt_patch=64, usm=False, blur_sigma=(0.1, 0.1), sinc_prob=0.0, resize_prob=(0, 0, 1),
        gaussian_noise_prob=1.0, noise_range=(0, 0), jpeg_range=(100, 100), second_blur_prob=0.0,
        resize_prob2=(0, 0, 1), gaussian_noise_prob2=1.0, noise_range2=(0, 0), jpeg_range2=(100, 100),
        final_sinc_prob=0.0)
    rng = np.random.default_rng(5)
    for _ in range(3):
        hr, lr = pipe.degrade_one(photo, rng)
        expected = cv2.resize(hr, (16, 16), interpolation=cv2.INTER_AREA)
        assert np.abs(lr - expected).mean() < 0.03
        # and the HR target is a crop of the GT at a multiple of the scale
        hits = [(t, l) for t in range(0, 200 - 64 + 1, 4) for l in range(0, 200 - 64 + 1, 4)
                if np.array_equal(photo[t:t + 64, l:l + 64], hr)]
        assert hits


def test_bad_arguments(photo):
    with pytest.raises(ValueError, match="multiple"):
        ref.ReferenceRealESRGAN(scale=4, gt_patch=30)
    with pytest.raises(ValueError, match="smaller"):
        ref.ReferenceRealESRGAN(scale=4, gt_patch=128).degrade_one(photo[:100, :100], np.random.default_rng(0))
