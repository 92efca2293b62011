"""Tests of the fixed test degradations (srcore.evaluation.paper), of the
paper's suite as the metrics loop scores it (srcore.evaluation) and of image
file I/O (srcore.imageio).

Every degradation step is checked against an independent computation (numpy /
scipy re-implementations or a different library) where one exists, and each
test is built to fail if the protocol parameter it covers changes.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image
from scipy.ndimage import convolve1d

from tests.conftest import SHARED_DATA
from srcore.evaluation import SUITES, EvalCase, evaluate, evaluate_suite
from srcore.evaluation.paper import (
    TEST_DEGRADATIONS,
    PaperSuite,
    make_test_lr,
    mod_crop,
    noise_seed,
    parse_degradation,
)
from srcore.imageio import ImageReadError, list_images, read_image, write_image
from srcore.metrics import psnr

SET5 = SHARED_DATA / "Set5"


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def natural_hr() -> np.ndarray:
    """A natural RGB image (ships inside the scikit-image wheel), 4-divisible."""
    return np.ascontiguousarray(skimage.data.astronaut()[96:288, 128:336])  # 192 x 208


@pytest.fixture(scope="module")
def random_hr() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (48, 52, 3), dtype=np.uint8)


# ------------------------------------------------- independent references


def gaussian_blur_ref(img: np.ndarray, sigma: float, ksize: int, pad_mode: str = "reflect") -> np.ndarray:
    """Separable float64 Gaussian blur; numpy 'reflect' padding == OpenCV REFLECT_101."""
    x = np.arange(ksize) - ksize // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    p = ksize // 2
    f = np.pad(img.astype(np.float64), ((p, p), (p, p), (0, 0)), mode=pad_mode)
    f = convolve1d(f, g, axis=0, mode="constant")[p:-p]
    f = convolve1d(f, g, axis=1, mode="constant")[:, p:-p]
    return f


def _pillow_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's antialiased bicubic weights: kernel stretched by the scale,
    window truncated at the image border and renormalised."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 2.0 * fscale
    w_mat = np.zeros((n_out, n_in))
    for o in range(n_out):
        c = (o + 0.5) * scale
        lo, hi = max(int(c - support + 0.5), 0), min(int(c + support + 0.5), n_in)
        xs = np.arange(lo, hi)
        w = _pillow_cubic((xs - c + 0.5) / fscale)
        w_mat[o, lo:hi] = w / w.sum()
    return w_mat


def bicubic_ref(img: np.ndarray, scale: int) -> np.ndarray:
    """Float64 re-implementation of Pillow's BICUBIC downscale (horizontal pass,
    round/clip to 8 bits as Pillow does, then vertical pass)."""
    h, w = img.shape[:2]
    t = np.einsum("ox,hxc->hoc", _resample_matrix(w, w // scale), img.astype(np.float64))
    t = np.clip(np.round(t), 0, 255)
    t = np.einsum("oy,yxc->oxc", _resample_matrix(h, h // scale), t)
    return np.clip(np.round(t), 0, 255).astype(np.uint8)


def pil_bicubic(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((w // scale, h // scale), Image.BICUBIC))


def add_noise_ref(lr: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 20.0 / 255.0, size=lr.shape)
    return np.trunc(np.clip(lr / 255.0 + noise, 0.0, 1.0) * 255.0).astype(np.uint8)


def jpeg_pil(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def jpeg_cv2(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def compose_ref(hr: np.ndarray, degradation: str, scale: int, seed: int) -> np.ndarray:
    """The protocol written out from library calls, in the order blur -> down -> noise -> jpeg."""
    parts = degradation.split("+")
    img = cv2.GaussianBlur(hr, (21, 21), sigmaX=2, sigmaY=2, borderType=cv2.BORDER_REFLECT_101) if "blur" in parts else hr
    img = pil_bicubic(img, scale)
    if "noise" in parts:
        img = add_noise_ref(img, seed)
    if "jpeg" in parts:
        img = jpeg_pil(img, 50)
    return img


# ------------------------------------------------------------------- blur


@pytest.mark.parametrize("which", ["natural", "random"])
def test_blur_matches_float_gaussian_21x21_sigma2_reflect101(which, natural_hr, random_hr):
    hr = natural_hr if which == "natural" else random_hr
    # blur only, checked before downsampling: undo nothing, test the HR-side op
    # through the public pipeline by using scale 1 (Pillow's resize to the same
    # size is the identity).
    assert np.array_equal(make_test_lr(hr, "clean", scale=1), hr)
    blurred = make_test_lr(hr, "blur", scale=1).astype(int)

    def stats(ref: np.ndarray) -> tuple[int, float]:
        d = np.abs(blurred - np.round(ref))
        return int(d.max()), float(d.mean())

    # OpenCV's uint8 path is fixed-point: allow one grey level.
    max_d, mean_d = stats(gaussian_blur_ref(hr, 2.0, 21))
    assert max_d <= 1 and mean_d < 0.25
    # The parameters matter: wrong sigma, a badly truncated kernel, or
    # symmetric (reflect, not reflect-101) borders are all far off.
    # (A 15x15 kernel at sigma 2 differs from 21x21 by < 0.02 grey levels, so
    # no uint8 test can tell those two apart.)
    for ref in (
        gaussian_blur_ref(hr, 1.5, 21),
        gaussian_blur_ref(hr, 2.5, 21),
        gaussian_blur_ref(hr, 2.0, 7),
    ):
        max_w, mean_w = stats(ref)
        assert max_w >= 5 and mean_w > 4 * max(mean_d, 0.05)
    if which == "random":  # borders only matter where neighbours differ
        assert stats(gaussian_blur_ref(hr, 2.0, 21, pad_mode="symmetric"))[0] >= 5


# --------------------------------------------------------------- bicubic


def test_bicubic_is_pillow_antialiased_bicubic(natural_hr, random_hr):
    for hr in (natural_hr, random_hr):
        lr = make_test_lr(hr, "clean", scale=4)
        assert lr.shape == (hr.shape[0] // 4, hr.shape[1] // 4, 3) and lr.dtype == np.uint8
        assert np.array_equal(lr, pil_bicubic(hr, 4))
        # Independent numpy implementation (tie-rounding in Pillow's
        # fixed-point arithmetic may move a rare pixel by one level).
        d = np.abs(lr.astype(int) - bicubic_ref(hr, 4).astype(int))
        assert d.max() <= 1 and (d > 0).mean() < 0.01


def test_bicubic_is_not_plain_torch_or_opencv_cubic(natural_hr):
    torch = pytest.importorskip("torch")
    hr = natural_hr
    h, w = hr.shape[:2]
    lr = make_test_lr(hr, "clean").astype(float)
    t = torch.from_numpy(hr.astype(np.float64)).permute(2, 0, 1)[None]
    plain = torch.nn.functional.interpolate(t, size=(h // 4, w // 4), mode="bicubic", align_corners=False)
    plain = plain[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
    cv_cubic = cv2.resize(hr, (w // 4, h // 4), interpolation=cv2.INTER_CUBIC).astype(float)
    # Not antialiased (a MATLAB-without-antialias / torch-style bicubic) -> aliasing, big differences.
    assert np.abs(lr - plain).mean() > 2.0
    assert np.abs(lr - cv_cubic).mean() > 2.0


# ------------------------------------------------------------------ noise


def test_noise_exact_formula_and_truncation(natural_hr):
    seed = 1234
    lr_clean = make_test_lr(natural_hr, "clean")
    noisy = make_test_lr(natural_hr, "noise", seed=seed)
    assert np.array_equal(noisy, add_noise_ref(lr_clean, seed))
    # Rounding instead of truncating would give a different image.
    n = np.random.default_rng(seed).normal(0.0, 20.0 / 255.0, size=lr_clean.shape)
    rounded = np.round(np.clip(lr_clean / 255.0 + n, 0, 1) * 255.0).astype(np.uint8)
    assert not np.array_equal(noisy, rounded)
    assert (noisy.astype(int) == rounded.astype(int) - 1).mean() > 0.3


def test_noise_statistics_on_mid_grey():
    hr = np.full((512, 512, 3), 128, np.uint8)
    lr = make_test_lr(hr, "noise", seed=7)
    assert lr.shape == (128, 128, 3)
    resid = lr.astype(np.float64) - 128.0
    # sigma 20 grey levels (20/255 in [0, 1]); ~49k samples -> std error ~0.07.
    assert abs(resid.std() - 20.0) < 0.5
    # Truncation shifts the mean down by ~0.5 level; rounding would not.
    assert -0.8 < resid.mean() < -0.2
    # Independent per channel: channels are uncorrelated.
    c = np.corrcoef(resid.reshape(-1, 3).T)
    assert np.abs(c[np.triu_indices(3, 1)]).max() < 0.03


def test_noise_seeding(natural_hr):
    a = make_test_lr(natural_hr, "noise", seed=5)
    assert np.array_equal(a, make_test_lr(natural_hr, "noise", seed=5))
    assert not np.array_equal(a, make_test_lr(natural_hr, "noise", seed=6))
    # Seeds don't affect noise-free degradations.
    assert np.array_equal(make_test_lr(natural_hr, "blur+jpeg", seed=1), make_test_lr(natural_hr, "blur+jpeg", seed=2))
    s1, s2 = noise_seed("Set5", "baby", "noise"), noise_seed("Set5", "bird", "noise")
    assert s1 != s2
    assert not np.array_equal(make_test_lr(natural_hr, "noise", seed=s1), make_test_lr(natural_hr, "noise", seed=s2))
    assert noise_seed("Set5", "baby", "noise") != noise_seed("Set14", "baby", "noise")
    assert noise_seed("Set5", "baby", "noise") != noise_seed("Set5", "baby", "blur+noise")
    assert noise_seed("Set5", "baby", "noise") != noise_seed("Set5", "baby", "noise", base_seed=1)


def test_noise_seed_is_sha256_and_process_independent():
    # The formula written out independently, plus the value computed once.
    expected = int.from_bytes(hashlib.sha256(b"0\x00Set5\x00baby\x00noise").digest()[:8], "big")
    assert expected == 9401860745327526552
    assert noise_seed("Set5", "baby", "noise") == expected
    assert noise_seed("Set14", "comic", "blur+noise+jpeg", base_seed=3) == 2383325894753919339
    # A fresh interpreter with a different hash salt gets the same seed.
    code = "from srcore.evaluation.paper import noise_seed; print(noise_seed('Set5', 'baby', 'noise'))"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True)
    assert int(out.stdout.strip()) == expected


# ------------------------------------------------------------------- jpeg


def test_jpeg_is_pillow_quality_50(natural_hr):
    lr = make_test_lr(natural_hr, "clean")
    out = make_test_lr(natural_hr, "jpeg")
    assert out.dtype == np.uint8 and out.shape == lr.shape
    assert np.array_equal(out, jpeg_pil(lr, 50))
    assert not np.array_equal(out, lr)
    for q in (30, 75, 95):
        assert np.abs(out.astype(int) - jpeg_pil(lr, q).astype(int)).mean() > 1.0
    # A second codec path (OpenCV's libjpeg) agrees with quality 50.
    assert np.abs(out.astype(int) - jpeg_cv2(lr, 50).astype(int)).mean() < 1.0
    assert np.abs(out.astype(int) - jpeg_cv2(lr, 75).astype(int)).mean() > 1.0


# ------------------------------------------------------------ composition


@pytest.mark.parametrize("degradation", TEST_DEGRADATIONS)
def test_all_degradations_match_composed_reference(degradation, natural_hr):
    out = make_test_lr(natural_hr, degradation, scale=4, seed=11)
    assert out.dtype == np.uint8 and out.shape == (48, 52, 3) and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, compose_ref(natural_hr, degradation, 4, 11))


def test_order_of_operations_matters(natural_hr):
    hr = natural_hr
    out = make_test_lr(hr, "blur+noise+jpeg", seed=3)
    # blur after downsampling instead of before
    wrong_blur = cv2.GaussianBlur(pil_bicubic(hr, 4), (21, 21), 2)
    wrong_blur = jpeg_pil(add_noise_ref(wrong_blur, 3), 50)
    # JPEG before noise instead of after
    wrong_jpeg = add_noise_ref(jpeg_pil(pil_bicubic(cv2.GaussianBlur(hr, (21, 21), 2), 4), 50), 3)
    for wrong in (wrong_blur, wrong_jpeg):
        assert np.abs(out.astype(int) - wrong.astype(int)).mean() > 1.0
    # The input is not modified.
    assert np.array_equal(hr, np.ascontiguousarray(skimage.data.astronaut()[96:288, 128:336]))


def test_degradations_are_distinct(natural_hr):
    outs = {d: make_test_lr(natural_hr, d, seed=0) for d in TEST_DEGRADATIONS}
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(outs[a], outs[b]), (a, b)


# ----------------------------------------------------- parsing / validation


def test_parse_degradation():
    assert parse_degradation("clean") == (False, False, False)
    assert parse_degradation("blur") == (True, False, False)
    assert parse_degradation("noise+jpeg") == (False, True, True)
    assert parse_degradation("blur+noise+jpeg") == (True, True, True)
    assert len({parse_degradation(d) for d in TEST_DEGRADATIONS}) == 8
    for bad in ("jpeg+noise", "sharpen", "blur+blur", "", "Blur", "clean+blur", None):
        with pytest.raises(ValueError) as e:
            parse_degradation(bad)
        assert repr(bad) in str(e.value) and "blur+noise+jpeg" in str(e.value)


def test_make_test_lr_validates_input(natural_hr):
    with pytest.raises(ValueError, match="unknown test degradation 'gauss'"):
        make_test_lr(natural_hr, "gauss")
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        make_test_lr(natural_hr.astype(np.float32) / 255, "clean")
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        make_test_lr(natural_hr[..., 0], "clean")
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        make_test_lr(np.zeros((8, 8, 4), np.uint8), "clean")
    with pytest.raises(TypeError):
        make_test_lr(natural_hr.tolist(), "clean")
    for scale in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="scale"):
            make_test_lr(natural_hr, "clean", scale=scale)
    with pytest.raises(ValueError, match="smaller than the scale"):
        make_test_lr(np.zeros((3, 8, 3), np.uint8), "clean", scale=4)


def test_mod_crop():
    img = np.arange(7 * 10 * 3, dtype=np.uint8).reshape(7, 10, 3)
    out = mod_crop(img, 4)
    assert out.shape == (4, 8, 3) and np.array_equal(out, img[:4, :8])  # top-left anchored
    assert mod_crop(img[..., 0], 3).shape == (6, 9)
    assert mod_crop(img, 1).shape == img.shape
    with pytest.raises(ValueError):
        mod_crop(img, 0)
    with pytest.raises(ValueError):
        mod_crop(img[:3], 4)


# ------------------------------------------------------------- the suite


def test_paper_suite_is_every_image_under_every_degradation_in_order(natural_hr, random_hr):
    sets = {"A": [("nat", natural_hr[:190, :205])], "B": [("rnd", random_hr), ("nat", natural_hr)]}
    degs = ["noise", "clean", "blur+jpeg"]
    cases = list(SUITES["paper"](sets, degs, 4, base_seed=2))
    assert [(c.set, c.image, c.degradation) for c in cases] == \
        [(s, n, d) for s, ims in sets.items() for n, _ in ims for d in degs]
    for c in cases:
        assert isinstance(c, EvalCase)
        hr = mod_crop(dict(sets[c.set])[c.image], 4)
        assert np.array_equal(c.hr, hr)
        seed = noise_seed(c.set, c.image, c.degradation, 2)
        assert np.array_equal(c.lr, make_test_lr(hr, c.degradation, 4, seed=seed))


def test_evaluate_scores_the_paper_suite(natural_hr, tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Upsample(scale_factor=4, mode="nearest")
    sets = {"A": [("nat", natural_hr[:190, :205])]}
    rows, means = evaluate(model, sets, ["clean", "noise"], 4, 4, base_seed=1, save_dir=tmp_path)
    assert [(r["set"], r["image"], r["degradation"]) for r in rows] == [("A", "nat", "clean"), ("A", "nat", "noise")]
    hr = mod_crop(natural_hr[:190, :205], 4)
    for r in rows:
        sr = np.asarray(Image.open(tmp_path / "A" / r["degradation"] / "nat.png"))
        assert sr.shape == hr.shape and r["psnr"] == psnr(sr, hr, crop_border=4)
        assert means[f"A/{r['degradation']}/psnr"] == r["psnr"]
    assert rows[0]["psnr"] > rows[1]["psnr"]
    assert set(rows[0]) == {"set", "image", "degradation", "psnr", "psnr_y", "ssim_y"}
    again, _ = evaluate_suite(model, PaperSuite(sets, ["clean", "noise"], 4, 1), 4)
    assert again == rows


# ------------------------------------------------------------- real images


@pytest.mark.skipif(not SET5.is_dir(), reason="Set5 benchmark images not available")
def test_real_set5_images():
    files = list_images(SET5)
    assert len(files) == 5
    for f in files:
        hr = mod_crop(read_image(f), 4)
        h, w = hr.shape[:2]
        for d in TEST_DEGRADATIONS:
            lr = make_test_lr(hr, d, scale=4, seed=noise_seed("Set5", f.stem, d))
            assert lr.shape == (h // 4, w // 4, 3) and lr.dtype == np.uint8, (f.name, d)
        clean = make_test_lr(hr, "clean")
        up = np.asarray(Image.fromarray(clean).resize((w, h), Image.BICUBIC))
        assert 20.0 < psnr(up, hr, crop_border=4) < 40.0, f.name


# ---------------------------------------------------------------- imageio


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    Image.fromarray(arr).save(path, **kw)
    return path


def test_read_write_roundtrip(tmp_path, random_hr):
    p = tmp_path / "sub" / "img.png"
    write_image(p, random_hr)
    got = read_image(p)
    assert got.dtype == np.uint8 and got.shape == random_hr.shape and np.array_equal(got, random_hr)
    # Overwrite atomically; no temporary files are left behind.
    write_image(p, random_hr[::-1].copy())
    assert np.array_equal(read_image(str(p)), random_hr[::-1])
    assert [f.name for f in p.parent.iterdir()] == ["img.png"]


def test_write_image_rejects_bad_input(tmp_path, random_hr):
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        write_image(tmp_path / "a.png", random_hr.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        write_image(tmp_path / "a.png", random_hr[..., 0])
    with pytest.raises(ValueError, match="PNG"):
        write_image(tmp_path / "a.jpg", random_hr)
    assert list(tmp_path.iterdir()) == []


def test_read_image_mode_conversions(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    out = read_image(_save(tmp_path / "grey.png", grey))
    assert out.shape == (9, 11, 3) and all(np.array_equal(out[..., c], grey) for c in range(3))

    rgba = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    out = read_image(_save(tmp_path / "rgba.png", rgba))
    assert np.array_equal(out, rgba[..., :3])  # alpha dropped, not composited

    pal = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).convert("P")
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(read_image(tmp_path / "pal.png"), np.asarray(pal.convert("RGB")))

    # 16-bit greyscale: round(v / 257), half up (128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1).
    v16 = np.array([[0, 128, 129, 257 * 100, 257 * 100 + 128, 257 * 100 + 129, 65535]], dtype=np.uint16)
    Image.fromarray(v16).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (1, 7, 3)
    assert out[0, :, 0].tolist() == [0, 0, 1, 100, 100, 101, 255]


def test_read_image_errors_name_the_file(tmp_path, random_hr):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(missing)

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageReadError) as e:
        read_image(garbage)
    assert str(garbage) in str(e.value)

    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for name, kw in (("trunc.png", {}), ("trunc.jpg", {"quality": 90})):
        p = _save(tmp_path / name, noisy, **kw)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageReadError) as e:
            read_image(p)
        assert str(p) in str(e.value)
        assert isinstance(e.value, ValueError)


def test_list_images(tmp_path, random_hr):
    for name in ("b.PNG", "a.jpg", "c.Tiff", "d.webp", "e.bmp", "f.jpeg"):
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tiff": "TIFF"}.get(name.split(".")[1].lower())
        Image.fromarray(random_hr).save(tmp_path / name, format=fmt)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "dir.png").mkdir()  # a folder with an image-like name is skipped
    got = list_images(tmp_path)
    assert [p.name for p in got] == ["a.jpg", "b.PNG", "c.Tiff", "d.webp", "e.bmp", "f.jpeg"]
    assert all(isinstance(p, Path) for p in got)

    with pytest.raises(FileNotFoundError, match="missing_folder"):
        list_images(tmp_path / "missing_folder")
    empty = tmp_path / "empty_set"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="empty_set"):
        list_images(empty)
