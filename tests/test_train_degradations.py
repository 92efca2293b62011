"""Training degradations (batched, seeded)."""
import numpy as np
import pytest
import torch
from PIL import Image

from srcore.data import builtin_images
from srcore.degrade import build_degradation
from srcore.degrade.bicubic import Bicubic
from srcore.degrade.multi import SimpleMulti, gaussian_kernels

MULTI = dict(blur_prob=0.5, blur_sigma=[0.2, 3.0], noise_prob=0.5, noise_sigma=[1, 30], jpeg_prob=0.5,
             jpeg_quality=[30, 95])


def _batch(n=4, size=128):
    imgs = [im[:size, :size] for _, im in builtin_images("test")[:n]]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def test_bicubic_matches_pillow_bicubic():
    hr = _batch(2)
    target, lr = Bicubic(4)(hr, torch.Generator().manual_seed(0))
    assert target is hr
    assert lr.shape == (2, 3, 32, 32)
    for i in range(2):
        arr = (hr[i] * 255).round().byte().permute(1, 2, 0).numpy()
        ref = np.asarray(Image.fromarray(arr).resize((32, 32), Image.BICUBIC)).astype(int)
        got = (lr[i] * 255).round().int().permute(1, 2, 0).numpy()
        assert np.abs(got - ref).max() <= 2 and np.abs(got - ref).mean() < 0.5


@pytest.mark.parametrize("name", ["bicubic", "multi"])
def test_lr_is_8bit_and_seeded(name):
    deg = build_degradation(name, 4, **(MULTI if name == "multi" else {}))
    hr = _batch()
    a = deg(hr, torch.Generator().manual_seed(5))[1]
    b = deg(hr, torch.Generator().manual_seed(5))[1]
    assert a.shape == (4, 3, 32, 32)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, (a * 255).round() / 255)
    if name == "multi":
        assert not torch.equal(a, deg(hr, torch.Generator().manual_seed(6))[1])


def test_multi_applies_each_operation_per_sample():
    hr = _batch()
    clean = Bicubic(4)(hr, None)[1]
    everything = SimpleMulti(4, **{**MULTI, "blur_prob": 1, "noise_prob": 1, "jpeg_prob": 1})
    nothing = SimpleMulti(4, **{**MULTI, "blur_prob": 0, "noise_prob": 0, "jpeg_prob": 0})
    g = torch.Generator().manual_seed(0)
    assert torch.equal(nothing(hr, g)[1], clean)
    diff = (everything(hr, g)[1] - clean).abs().mean(dim=(1, 2, 3))
    assert (diff > 1 / 255).all()


def test_gaussian_kernels_are_normalised_with_the_right_sigma():
    k = gaussian_kernels(torch.tensor([1.0, 2.5]), 21)
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(2))
    r = torch.arange(21.0) - 10
    var = (k.sum(dim=1) * r**2).sum(dim=1)
    assert var[0] == pytest.approx(1.0, rel=1e-3) and var[1] == pytest.approx(6.25, rel=2e-2)


def test_unknown_degradation_names_allowed_ones():
    with pytest.raises(ValueError, match="'foo'.*bicubic, multi"):
        build_degradation("foo", 4)


def test_paired_random_crop_keeps_hr_and_lr_aligned():
    hr = _batch(3, 128)
    target, lr = Bicubic(4, gt_patch=64)(hr, torch.Generator().manual_seed(1))
    assert target.shape == (3, 3, 64, 64) and lr.shape == (3, 3, 16, 16)
    full_lr = Bicubic(4)(hr, None)[1]
    for i in range(3):
        # locate the LR patch in the full LR image; the HR patch must sit at 4x that place
        hits = [(t, l) for t in range(17) for l in range(17) if torch.equal(full_lr[i, :, t:t + 16, l:l + 16], lr[i])]
        assert hits and any(torch.equal(hr[i, :, 4 * t:4 * t + 64, 4 * l:4 * l + 64], target[i]) for t, l in hits)
