"""Built-in data, folder data and training patches."""
import numpy as np
import pytest
import torch

from srcore.data import KeyRange, TrainPatches, builtin_images, check_image_source, load_images
from srcore.imageio import ImageReadError


def test_builtin_splits_are_real_disjoint_photographs():
    train, test = builtin_images("train"), builtin_images("test")
    assert len(train) >= 8 and len(test) >= 4
    assert not {n for n, _ in train} & {n for n, _ in test}
    for _, img in train + test:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256
        assert img.std() > 10  # a photograph, not a flat test pattern
    with pytest.raises(ValueError, match="'val'.*allowed"):
        builtin_images("val")


def test_patches_are_a_pure_function_of_seed_and_key():
    images = builtin_images("train")[:3]
    a, b = TrainPatches(images, 48, seed=1), TrainPatches(images, 48, seed=1)
    assert torch.equal(a[17], b[17]) and a[17].shape == (3, 48, 48) and a[17].dtype == torch.uint8
    assert not torch.equal(a[17], a[18])
    assert not torch.equal(a[17], TrainPatches(images, 48, seed=2)[17])
    assert list(KeyRange(3, 5, 4)) == list(range(12, 20))


def test_patches_come_from_the_images_with_flips():
    img = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    ds = TrainPatches([("x", img)], 16, seed=0, hflip=True)
    flips = 0
    for key in range(40):
        p = ds[key].permute(1, 2, 0).numpy()
        found = any((img[t:t + 16, l:l + 16] == p).all() for t in range(49) for l in range(49))
        flipped = any((img[t:t + 16, l:l + 16][:, ::-1] == p).all() for t in range(49) for l in range(49))
        assert found or flipped
        flips += flipped and not found
    assert 5 < flips < 35


def test_small_images_are_reflect_padded_to_the_patch():
    img = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    p = TrainPatches([("small", img)], 32, seed=0, hflip=False)[0].permute(1, 2, 0).numpy()
    assert p.shape == (32, 32, 3)
    # reflect-101 continuation below row 19: row 20 mirrors row 18
    padded = np.pad(img, ((0, 12), (0, 2), (0, 0)), mode="reflect")
    assert any((padded[:, l:l + 32] == p).all() for l in range(1))


def test_folder_source_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        check_image_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        check_image_source(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_images(str(bad), "train")


def test_folder_test_set_from_shared_data(shared_data):
    images = load_images(str(shared_data / "Set5"), "test")
    assert [n for n, _ in images] == ["baby", "bird", "butterfly", "head", "woman"]


def test_the_job_holds_the_training_set_once_while_loading_it(tmp_path, monkeypatch):
    """Decoded, sharpened (USM on load) and copied a chunk at a time, the loader's peak stays near
    the set's own size; loading everything first, then sharpening, then copying (what it did
    before) peaks above twice it. (One USM worker thread: each holds ~10 images' worth of float
    planes while it works, a constant that a real training set dwarfs.)"""
    import tracemalloc

    import sweeper.build as build
    from srcore.imageio import write_image
    from sweeper.compose import compose

    rng = np.random.default_rng(0)
    for i in range(48):
        write_image(tmp_path / f"im{i:02d}.png", rng.integers(0, 256, (410, 420, 3), dtype=np.uint8))
    cfg = compose([f"data.train={tmp_path}", "train.patch_size=32"])
    deg = build.degradation(cfg)
    monkeypatch.setattr(build, "PREPARE_CHUNK", 3)

    def peak_of(make):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        tracemalloc.start()
        try:
            patches = make()
            return tracemalloc.get_traced_memory()[1] / patches.nbytes(), patches
        finally:
            tracemalloc.stop()
            torch.set_num_threads(threads)

    streamed, patches = peak_of(lambda: build.train_patches(cfg, deg))
    at_once, reference = peak_of(lambda: TrainPatches(deg.prepare_images(load_images(str(tmp_path), "train")),
                                                      build.gt_crop_size(cfg), cfg.seed))
    assert all(torch.equal(a, b) for a, b in zip(patches.images, reference.images)) and len(patches.images) == 48
    assert streamed < 1.5 < 2 < at_once, (streamed, at_once)
