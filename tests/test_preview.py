"""The preview command writes a real PNG grid of HR / LR pairs drawn from the training pipeline."""
import numpy as np

from srcore.imageio import read_image
from sweeper.preview import main


def test_preview_writes_hr_lr_grid(tmp_path):
    out = main(["degradation=multi", "train.patch_size=16", "--n", "3", "--out", str(tmp_path / "g.png")])
    img = read_image(out)
    assert img.shape == (3 * 64 + 2 * 4, 2 * 64 + 4, 3)
    hr, lr = img[:64, :64].astype(int), img[:64, 68:].astype(int)
    assert hr.std() > 5                      # a real photograph
    assert np.abs(hr - lr).mean() > 1        # the LR half is degraded, not a copy
    # nearest-neighbour enlargement: 4x4 blocks of the LR half are constant
    assert (lr[::4, ::4] == lr[3::4, 3::4]).mean() > 0.99
