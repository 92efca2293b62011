"""Batched random blur kernels (srcore.degrade.kernels): formulas, distributions, filtering
(srcore.degrade.filtering)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special, stats

from srcore.degrade.filtering import filter2d, reflect_pad, sep_filter2d
from srcore.degrade.kernels import (KERNEL_SIZES, KERNEL_TYPES, bivariate_gaussian, bivariate_generalized_gaussian,
                                    bivariate_plateau, final_sinc_kernels, kernels_from_params, pulse_kernels,
                                    random_mixed_kernels, sample_final_sinc_params, sample_kernel_params,
                                    sinc_kernels)
from tests.degrade_params import paper_realesrgan_params

PAPER = paper_realesrgan_params()
PAPER_KERNEL_PROB = tuple(PAPER["kernel_prob"])
# the paper's stage-1 kernel settings, as sample_kernel_params takes them
STAGE1 = dict(kernel_list=PAPER["kernel_list"], kernel_prob=PAPER["kernel_prob"], sigma_range=PAPER["blur_sigma"],
              betag_range=PAPER["betag_range"], betap_range=PAPER["betap_range"])



# Reference: per-sample filtering as one grouped convolution (reflect-101 borders).
def filter_per_sample(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve sample i of x with kernels[i] (reflect-101 borders), as one grouped conv."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    pad = k // 2
    xp = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    weight = kernels.to(x.dtype).repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(xp, weight, groups=n * c).reshape(n, c, h, w)

def _moments(k: torch.Tensor) -> np.ndarray:
    """Covariance [[E xx, E xy], [E xy, E yy]] of a kernel, x = column offset, y = row offset."""
    k = k.double()
    size = k.shape[-1]
    ax = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    mx, my = (k * xx).sum(), (k * yy).sum()
    cxx = (k * (xx - mx) ** 2).sum()
    cyy = (k * (yy - my) ** 2).sum()
    cxy = (k * (xx - mx) * (yy - my)).sum()
    return np.array([[cxx, cxy], [cxy, cyy]])


def _cov(sx, sy, theta):
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return r @ np.diag([sx**2, sy**2]) @ r.T


# ---------------------------------------------------------------- formulas
@pytest.mark.parametrize("sx,sy,theta", [(2.0, 2.0, 0.0), (3.0, 1.2, 0.0), (3.0, 1.2, 0.6), (1.5, 2.8, -2.2),
                                         (2.5, 1.0, math.pi / 2)])
def test_gaussian_kernel_has_the_requested_covariance(sx, sy, theta):
    # 41x41 so that truncation at sigma 3 is negligible (> 6 sigma)
    k = bivariate_gaussian(torch.tensor([sx]), torch.tensor([sy]), torch.tensor([theta]), pad_to=41)[0]
    assert abs(float(k.sum()) - 1) < 1e-6
    got, want = _moments(k), _cov(sx, sy, theta)
    assert np.abs(got - want).max() < 0.02 * max(sx, sy) ** 2, (got, want)


def test_rotation_turns_the_principal_axis_by_theta():
    for theta in (0.3, 1.0, 2.0, -0.7):
        k = bivariate_gaussian(torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([theta]), pad_to=41)[0]
        w, v = np.linalg.eigh(_moments(k))
        major = v[:, np.argmax(w)]  # (x, y) direction of the largest variance
        angle = math.atan2(major[1], major[0])
        diff = (angle - theta + math.pi / 2) % math.pi - math.pi / 2  # axes are defined modulo pi
        assert abs(diff) < 1e-3, (theta, angle)
    # theta = 0: the x axis (columns) gets sigma_x
    k = bivariate_gaussian(torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([0.0]), pad_to=41)[0]
    assert float((k.sum(0) * (torch.arange(41) - 20.0) ** 2).sum()) == pytest.approx(9.0, rel=0.01)
    assert float((k.sum(1) * (torch.arange(41) - 20.0) ** 2).sum()) == pytest.approx(1.0, rel=0.01)


def test_generalized_with_beta_one_is_the_gaussian():
    sx, sy, th = torch.tensor([2.3, 0.7]), torch.tensor([1.1, 0.7]), torch.tensor([0.8, 0.0])
    a = bivariate_generalized_gaussian(sx, sy, th, torch.ones(2))
    b = bivariate_gaussian(sx, sy, th)
    assert torch.allclose(a, b, atol=1e-7)
    # and beta != 1 changes the shape
    c = bivariate_generalized_gaussian(sx, sy, th, torch.full((2,), 2.0))
    assert (c - b).abs().max() > 1e-3


@pytest.mark.parametrize("sigma,beta", [(2.0, 1.0), (2.5, 1.5), (1.5, 2.0)])
def test_plateau_profile(sigma, beta):
    k = bivariate_plateau(torch.tensor([sigma]), torch.tensor([sigma]), torch.tensor([0.0]),
                          torch.tensor([beta]), pad_to=21)[0].double()
    r = torch.arange(11, dtype=torch.float64)
    profile = k[10, 10:] / k[10, 10]
    want = 1 / (1 + (r / sigma) ** (2 * beta))
    assert torch.allclose(profile, want, atol=1e-6)
    # isotropic: same along the vertical axis and symmetric
    assert torch.allclose(k[10:, 10], k[10, 10:], atol=1e-9)
    assert torch.allclose(k, k.flip(0).flip(1), atol=1e-9)


def test_sinc_kernel_matches_the_bessel_formula():
    """An independent NumPy/SciPy evaluation of Real-ESRGAN's circular low-pass kernel."""
    for omega, size in ((math.pi / 3, 7), (2.0, 13), (math.pi * 0.9, 21)):
        c = (size - 1) / 2
        y, x = np.mgrid[0:size, 0:size].astype(np.float64)
        r = np.hypot(x - c, y - c)
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = omega * special.j1(omega * r) / (2 * np.pi * r)
        ref[size // 2, size // 2] = omega**2 / (4 * np.pi)
        ref /= ref.sum()
        ours = sinc_kernels(torch.tensor([omega]), size, pad_to=21)[0].double().numpy()
        p = (21 - size) // 2
        assert np.abs(ours[p:p + size, p:p + size] - ref).max() < 1e-6
        mask = np.ones((21, 21), bool)
        mask[p:p + size, p:p + size] = False
        assert np.all(ours[mask] == 0)
        assert abs(ours.sum() - 1) < 1e-6


@pytest.mark.parametrize("omega", [1.05, 1.6])
def test_sinc_kernel_is_a_low_pass_filter(omega):
    k = sinc_kernels(torch.tensor([omega]), 21)[0].double()
    spec = torch.fft.fft2(k, s=(256, 256)).abs()
    f = torch.fft.fftfreq(256, dtype=torch.float64) * 2 * math.pi  # rad/pixel
    rad = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    passband, stopband = spec[rad < 0.7 * omega], spec[(rad > 1.4 * omega) & (rad < math.pi)]
    # ~1 below the cut-off and ~0 above, up to the ripple of a 21-tap truncation
    assert (passband - 1).abs().max() < 0.2 and (passband - 1).abs().mean() < 0.08
    assert stopband.max() < 0.12 and stopband.mean() < 0.03
    # a higher cut-off passes what this one stops
    wide = torch.fft.fft2(sinc_kernels(torch.tensor([3.0]), 21)[0].double(), s=(256, 256)).abs()
    band = (rad > 1.4 * omega) & (rad < 2.5)
    assert wide[band].mean() > 0.8 > 0.1 > spec[band].mean()


def test_every_kernel_sums_to_one_and_sizes_are_odd_and_padded():
    g = torch.Generator().manual_seed(0)
    p = sample_kernel_params(4000, g, **STAGE1, sinc_prob=0.3)
    k = kernels_from_params(p, pad_to=21)
    assert k.shape == (4000, 21, 21)
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(4000), atol=1e-5)
    assert torch.isfinite(k).all()
    assert set(p["size"].tolist()) == set(KERNEL_SIZES)
    ax = torch.arange(21) - 10
    outside = (ax.abs()[None, :, None] > p["size"][:, None, None] // 2) | \
              (ax.abs()[None, None, :] > p["size"][:, None, None] // 2)
    assert (k[outside] == 0).all()
    # Gaussian-family kernels are non-negative and peak at the centre
    g_types = ~p["sinc"]
    assert (k[g_types] >= 0).all()
    assert (k[g_types][:, 10, 10] >= k[g_types].amax(dim=(1, 2)) - 1e-7).all()
    # wide kernels fill their window: with sigma >= 2 the window corners are non-zero
    wide = g_types & (p["sigma_x"] > 2) & (p["sigma_y"] > 2) & (p["type"] < 2)
    s = p["size"][wide] // 2
    corners = k[wide][torch.arange(int(wide.sum())), 10 - s, 10 - s]
    assert (corners > 0).all()


def test_random_mixed_kernels_is_seeded_and_on_the_generator_device():
    a = random_mixed_kernels(16, torch.Generator().manual_seed(3), **STAGE1)
    b = random_mixed_kernels(16, torch.Generator().manual_seed(3), **STAGE1)
    c = random_mixed_kernels(16, torch.Generator().manual_seed(4), **STAGE1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (16, 21, 21) and a.dtype == torch.float32
    assert torch.allclose(a.sum(dim=(1, 2)), torch.ones(16), atol=1e-5)


def test_pulse_and_final_sinc():
    g = torch.Generator().manual_seed(0)
    p = sample_final_sinc_params(20000, g, prob=0.8)
    on = p["on"].double().mean().item()
    assert abs(on - 0.8) < 4 * math.sqrt(0.8 * 0.2 / 20000)
    assert p["omega"].min() >= math.pi / 3 - 1e-6 and p["omega"].max() <= math.pi + 1e-6
    k = final_sinc_kernels({key: v[:50] for key, v in p.items()})
    pulse = pulse_kernels(1)[0]
    for i in range(50):
        assert torch.equal(k[i], pulse) == (not bool(p["on"][i]))
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(50), atol=1e-5)


# ---------------------------------------------------------------- distributions
N = 20000


def _binom_ok(count, n, p):
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9


def test_kernel_type_frequencies_match_the_probabilities():
    p = sample_kernel_params(N, torch.Generator().manual_seed(1), **STAGE1)
    counts = torch.bincount(p["type"], minlength=6).numpy()
    chi = stats.chisquare(counts, np.array(PAPER_KERNEL_PROB) * N)
    assert chi.pvalue > 1e-4, counts
    for i, prob in enumerate(PAPER_KERNEL_PROB):
        assert _binom_ok(counts[i], N, prob), (KERNEL_TYPES[i], counts[i])
    # a restricted list only ever yields its own types
    q = sample_kernel_params(2000, torch.Generator().manual_seed(1),
                             **{**STAGE1, "kernel_list": ["aniso", "plateau_iso"], "kernel_prob": [0.5, 0.5]})
    assert set(q["type"].tolist()) == {KERNEL_TYPES.index("aniso"), KERNEL_TYPES.index("plateau_iso")}


def test_sigma_rotation_and_size_distributions():
    p = sample_kernel_params(N, torch.Generator().manual_seed(2), **{**STAGE1, "sigma_range": (0.2, 3.0)})
    sx = p["sigma_x"].double().numpy()
    assert stats.kstest(sx, stats.uniform(loc=0.2, scale=2.8).cdf).pvalue > 1e-4
    aniso = np.isin(p["type"].numpy(), [1, 3, 5])
    iso = ~aniso
    sy, theta = p["sigma_y"].double().numpy(), p["theta"].double().numpy()
    assert stats.kstest(sy[aniso], stats.uniform(loc=0.2, scale=2.8).cdf).pvalue > 1e-4
    assert stats.kstest(theta[aniso], stats.uniform(loc=-math.pi, scale=2 * math.pi).cdf).pvalue > 1e-4
    # isotropic kinds: one sigma, no rotation; anisotropic: sigma_x and sigma_y independent
    assert np.array_equal(sy[iso], sx[iso]) and (theta[iso] == 0).all()
    assert abs(np.corrcoef(sx[aniso], p["sigma_y"].numpy()[aniso])[0, 1]) < 0.05
    sizes = p["size"].numpy()
    counts = np.array([(sizes == s).sum() for s in KERNEL_SIZES])
    assert counts.sum() == N and stats.chisquare(counts).pvalue > 1e-4


def test_sinc_frequency_and_cutoff_ranges():
    p = sample_kernel_params(N, torch.Generator().manual_seed(3), **STAGE1, sinc_prob=0.1)
    assert _binom_ok(int(p["sinc"].sum()), N, 0.1)
    small = p["size"] < 13
    om = p["omega"].double()
    assert om[small].min() >= math.pi / 3 - 1e-6 and om[~small].min() >= math.pi / 5 - 1e-6
    assert om.max() <= math.pi + 1e-6
    assert om[~small].min() < math.pi / 3 - 0.1  # the wider range is really used for large kernels
    assert stats.kstest(om[small].numpy(), stats.uniform(loc=math.pi / 3, scale=2 * math.pi / 3).cdf).pvalue > 1e-4
    assert sample_kernel_params(1000, torch.Generator().manual_seed(3), **STAGE1, sinc_prob=0.0)["sinc"].sum() == 0


def test_beta_draws_follow_basicsr():
    p = sample_kernel_params(N, torch.Generator().manual_seed(4),
                             **{**STAGE1, "betag_range": (0.5, 4.0), "betap_range": (1.0, 2.0)})
    t, beta = p["type"].numpy(), p["beta"].double().numpy()
    gen = beta[(t == 2) | (t == 3)]
    assert gen.min() >= 0.5 - 1e-6 and gen.max() <= 4.0 + 1e-6
    assert abs((gen < 1).mean() - 0.5) < 0.05  # half below 1, half above
    assert stats.kstest((gen[gen < 1] - 0.5) / 0.5, "uniform").pvalue > 1e-4
    pla = beta[(t == 4) | (t == 5)]
    assert abs((np.abs(pla - 1) < 1e-6).mean() - 0.5) < 0.05  # the [lo, 1] half is exactly 1 for [1, 2]
    assert pla.max() <= 2 + 1e-6 and pla.min() >= 1 - 1e-6
    assert (beta[t < 2] == 1).all()


def test_same_stream_length_whatever_the_configuration():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sample_kernel_params(100, g1, **{**STAGE1, "kernel_list": ["iso"], "kernel_prob": [1.0]}, sinc_prob=0.0)
    sample_kernel_params(100, g2, **STAGE1, sinc_prob=0.9)
    assert torch.equal(g1.get_state(), g2.get_state())


# ---------------------------------------------------------------- filtering
def test_filter2d_backends_agree_with_filter_per_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 37, 45, generator=g)
    k = torch.rand(4, 21, 21, generator=g)  # not symmetric: checks correlation vs convolution
    k[1] = 0
    k[1, 10, 10] = 1  # a pulse
    k[2, :7] = 0
    k[2, 14:] = 0
    k[2, :, :7] = 0
    k[2, :, 14:] = 0  # a 7x7 kernel padded to 21
    k = k / k.sum(dim=(1, 2), keepdim=True)
    ref = filter_per_sample(x, k)
    for backend in ("cv2", "torch"):
        assert torch.allclose(filter2d(x, k, backend), ref, atol=1e-5), backend
    assert torch.equal(filter2d(x, k, "cv2")[1], x[1])
    # separable kernels take OpenCV's separable path
    sep = bivariate_gaussian(torch.tensor([1.5, 2.5, 0.6, 3.0]), torch.tensor([1.5, 2.5, 0.6, 3.0]),
                             torch.zeros(4), size=torch.tensor([21, 15, 7, 21]))
    assert torch.allclose(filter2d(x, sep, "cv2"), filter_per_sample(x, sep), atol=1e-5)


def test_filter2d_on_images_smaller_than_the_kernel():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 6, 9, generator=g)
    k = torch.rand(2, 21, 21, generator=g)
    k = k / k.sum(dim=(1, 2), keepdim=True)
    a, b = filter2d(x, k, "torch"), filter2d(x, k, "cv2")
    assert torch.allclose(a, b, atol=1e-5)
    # reflect-101 for any pad: index pattern of a length-3 signal padded by 5
    r = reflect_pad(torch.arange(3.0).view(1, 1, 1, 3), (0, 5))
    assert r.view(-1).tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1]


def test_sep_filter2d_matches_opencv_gaussian_blur():
    import cv2

    x = torch.rand(2, 3, 60, 70, generator=torch.Generator().manual_seed(2))
    k1 = torch.from_numpy(cv2.getGaussianKernel(51, 0).ravel())
    for backend in ("cv2", "torch"):
        out = sep_filter2d(x, k1, backend)
        for i in range(2):
            ref = cv2.GaussianBlur(x[i].permute(1, 2, 0).numpy(), (51, 51), 0, borderType=cv2.BORDER_REFLECT_101)
            assert np.abs(out[i].permute(1, 2, 0).numpy() - ref).max() < 1e-5, backend


def test_random_mixed_kernels_refuses_sizes_beyond_the_padded_size():
    """The kernels are built without reading the device, so a size beyond pad_to (which would be
    cut silently) is refused up front, from the Python sizes."""
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="pad_to=21 must be odd and >= every kernel size"):
        random_mixed_kernels(2, g, ["iso"], [1.0], sigma_range=(0.5, 3), betag_range=(0.5, 4), betap_range=(1, 2),
                             sinc_prob=1.0, sizes=[31], pad_to=21)
