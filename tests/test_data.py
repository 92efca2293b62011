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
