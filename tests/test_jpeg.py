"""Batched JPEG in PyTorch (srcore.degrade.jpeg) against Pillow's libjpeg-turbo."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from srcore.degrade.jpeg import CHROMA_TABLE, LUMA_TABLE, jpeg_compress, quant_tables

# Tolerance of the PyTorch codec against Pillow, measured on these photographs at q 30..95
# (whole images and 203x317 crops): mean |diff| <= 0.41 levels, PSNR >= 48.2 dB. Asserted with
# a margin:
MAX_MEAN_ABS_DIFF = 0.6  # levels of 255
MIN_PSNR = 46.0  # dB


def _pillow(arr: np.ndarray, q: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _ours(arr: np.ndarray, q, backend="torch") -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255
    y = jpeg_compress(x, torch.tensor([q]), backend)[0]
    return (y * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


PHOTOS = {
    "astronaut": data.astronaut()[:256, :256],
    "coffee": data.coffee()[100:356, 200:456],
    "chelsea_odd": data.chelsea()[:203, :317],  # not a multiple of 16 (nor even)
    "rocket_odd": data.rocket()[50:249, 100:333],
}


def test_quantisation_tables_are_ijg_and_match_pillow():
    t = quant_tables(torch.tensor([50, 100, 10]))
    assert t.shape == (3, 2, 8, 8)
    assert t[0, 0].flatten().int().tolist() == list(LUMA_TABLE)
    assert t[0, 1].flatten().int().tolist() == list(CHROMA_TABLE)
    assert (t[1] == 1).all()
    # q=10: scale 500 -> (16*500+50)//100 = 80, big entries clamped to 255 (baseline)
    assert t[2, 0, 0, 0] == 80 and t[2, 1].max() == 255
    for q in (5, 30, 49, 50, 51, 75, 95):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="JPEG", quality=q)
        pil = Image.open(io.BytesIO(buf.getvalue())).quantization
        ours = quant_tables(torch.tensor([q]))[0].reshape(2, 64).int().tolist()
        assert [list(pil[0]), list(pil[1])] == ours, q


@pytest.mark.parametrize("name", list(PHOTOS))
@pytest.mark.parametrize("q", [30, 50, 75, 95])
def test_torch_codec_matches_pillow_within_tolerance(name, q):
    arr = np.ascontiguousarray(PHOTOS[name])
    ref, ours = _pillow(arr, q).astype(int), _ours(arr, q).astype(int)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).mean() < MAX_MEAN_ABS_DIFF
    assert _psnr(ours, ref) > MIN_PSNR
    # and it is a real compression: the error vs the original is Pillow's, to a few percent
    err_ref, err_ours = np.abs(ref - arr).mean(), np.abs(ours - arr).mean()
    assert abs(err_ours - err_ref) < 0.05 * err_ref + 0.05


@pytest.mark.parametrize("name", ["astronaut", "chelsea_odd"])
def test_cv2_backend_is_bit_identical_to_pillow(name):
    arr = np.ascontiguousarray(PHOTOS[name])
    for q in (10, 30, 50, 95):
        assert np.array_equal(_ours(arr, q, "cv2"), _pillow(arr, q))


@pytest.mark.parametrize("name", list(PHOTOS))
def test_opencv_codec_decodes_to_pillows_pixels(name):
    # why one round trip (srcore.imageio.jpeg_roundtrip, Pillow) can serve every JPEG step
    import cv2

    arr = np.ascontiguousarray(PHOTOS[name])
    for q in (1, 10, 30, 50, 75, 95, 100):
        ok, buf = cv2.imencode(".jpg", arr[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, q])
        assert ok and np.array_equal(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1], _pillow(arr, q)), q


@pytest.mark.parametrize("backend", ["torch", "cv2"])
def test_error_grows_as_quality_falls(backend):
    arr = np.ascontiguousarray(PHOTOS["coffee"])
    mse = [np.mean((_ours(arr, q, backend).astype(float) - arr) ** 2) for q in (100, 95, 75, 50, 30, 10, 2)]
    assert all(a < b for a, b in zip(mse, mse[1:])), mse


@pytest.mark.parametrize("backend", ["torch", "cv2"])
def test_per_sample_qualities(backend):
    a = torch.from_numpy(np.ascontiguousarray(PHOTOS["astronaut"])).permute(2, 0, 1).float() / 255
    b = torch.from_numpy(np.ascontiguousarray(PHOTOS["coffee"])).permute(2, 0, 1).float() / 255
    x = torch.stack([a, a, b])
    out = jpeg_compress(x, torch.tensor([10, 95, 60]), backend)
    for i, q in enumerate((10, 95, 60)):
        assert torch.equal(out[i], jpeg_compress(x[i:i + 1], torch.tensor([q]), backend)[0])
    err = (out - x).abs().mean(dim=(1, 2, 3))
    assert err[0] > 2 * err[1]
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, (out * 255).round() / 255) and out.min() >= 0 and out.max() <= 1


def test_input_handling():
    x = torch.rand(2, 3, 13, 22, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2  # out of range
    for backend in ("torch", "cv2"):
        y = jpeg_compress(x, 75, backend)  # one int for the whole batch
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert torch.equal(y, jpeg_compress(x.clamp(0, 1), torch.tensor([75, 75]), backend))
    y64 = jpeg_compress(x.double(), 75)
    assert y64.dtype == torch.float64
    with pytest.raises(ValueError, match="quality has 3 entries"):
        jpeg_compress(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="RGB"):
        jpeg_compress(x[:, :1], 50)
    with pytest.raises(ValueError, match="backend"):
        jpeg_compress(x, 50, "pil")
