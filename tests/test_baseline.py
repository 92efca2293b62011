"""The bicubic-interpolation reference row: exactly Pillow's resize, scored by the test protocol."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from srcore.models.interpolation import BicubicInterpolation
from sweeper.baseline import main
from sweeper.preflight import PreflightError


def test_bicubic_interpolation_is_pillows_resize_of_each_image():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(2, 9, 13, 3), dtype=np.uint8)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    y = BicubicInterpolation(4)(x)
    assert y.shape == (2, 3, 36, 52) and y.dtype == torch.float32
    for img, out in zip(imgs, y):
        expected = np.asarray(Image.fromarray(img).resize((52, 36), Image.BICUBIC))
        np.testing.assert_array_equal((out.permute(1, 2, 0) * 255).round().byte().numpy(), expected)


@pytest.mark.parametrize("bad", [0, 2.5, True])
def test_bicubic_interpolation_rejects_a_bad_scale(bad):
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        BicubicInterpolation(bad)


def test_baseline_command_writes_the_table_and_degradations_cost_psnr(tmp_path):
    out = main(["--out", str(tmp_path / "bl.md")])
    table = pd.read_csv(out.with_suffix(".csv"))
    assert len(table) == 8 and set(table["set"]) == {"builtin"}
    psnr = table.set_index("degradation")["psnr"]
    # each degradation makes interpolation worse, and stacking them worse still
    assert psnr["clean"] > psnr["blur"] > psnr["blur+jpeg"]
    assert psnr["clean"] > psnr["jpeg"] > psnr["noise+jpeg"] > psnr["blur+noise+jpeg"]
    assert psnr["clean"] > psnr["noise"] > psnr["blur+noise"]
    assert "| builtin |" in out.read_text() and f"{psnr['jpeg']:.2f}" in out.read_text()


def test_baseline_command_rejects_an_unknown_test_degradation(tmp_path):
    with pytest.raises(PreflightError, match="'sharpen'.*allowed: clean"):
        main(["eval.degradations=[clean,sharpen]", "--out", str(tmp_path / "bl.md")])
    assert not (tmp_path / "bl.md").exists()


def test_set5_bicubic_matches_the_published_figure(shared_data, tmp_path):
    # Bicubic x4 on Set5 is 28.42 dB PSNR-Y in the SR literature (MATLAB imresize; Pillow's
    # kernel differs slightly at the borders): a wrong crop, colour transform or alignment
    # would be off by far more than 0.1 dB.
    out = main([f"paths.data_root={shared_data}", "data=benchmarks", "eval.degradations=[clean]",
                "--out", str(tmp_path / "set5.md")])
    table = pd.read_csv(out.with_suffix(".csv")).set_index("set")
    y = table.loc["Set5", "psnr_y"]
    assert abs(y - 28.42) < 0.1, y
