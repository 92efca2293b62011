"""The Real-ESRGAN pipeline shaped for a GPU (issue 20): its parameters are drawn on the host,
the batched ``torch`` backend never reads a tensor back nor branches on one, its constants are
built once per device, the random-resize sizes can be bucketed, and with noise on it matches
the OpenCV path in distribution."""
from __future__ import annotations

import math
import sys

import pytest
import torch

import srcore.degrade.realesrgan as realesrgan
from srcore.degrade import validate_degradation
from srcore.degrade.realesrgan import bucketed
from tests.degrade_params import HOST_READS, OpLog, paper_realesrgan, paper_realesrgan_params, photo_batch

def paper(backend="torch", **over):
    return paper_realesrgan(backend, **over)


def covering_params(deg, n=4, seeds=range(40)):
    """Parameters of several seeds that together take both final orders and every resize kind."""
    chosen, orders, kinds = [], set(), set()
    for seed in seeds:
        p = deg.sample_params(n, torch.Generator().manual_seed(seed))
        new = {p["final_order"]} - orders | {p["resize1"]["type"], p["resize2"]["type"]} - kinds
        if new:
            chosen.append(p)
            orders.add(p["final_order"])
            kinds |= {p["resize1"]["type"], p["resize2"]["type"]}
    assert orders == {"resize_sinc_first", "jpeg_first"} and kinds == {"up", "down", "keep"}
    return chosen


# ------------------------------------------------------------------ no host reads
@pytest.mark.parametrize("over", [{}, {"resize_bucket": 8}, {"usm_on_load": False}],
                         ids=["paper", "bucketed", "usm-per-batch"])
def test_the_torch_pipeline_runs_on_meta_tensors_so_it_never_reads_the_device(monkeypatch, over):
    """A meta tensor has no data: any .item(), bool(), .tolist(), .cpu(), nonzero or bincount on
    one raises. The whole pipeline (USM, both stages, both final orders, the crop) runs on them."""
    monkeypatch.setattr(realesrgan, "noise_generator", lambda device, seed: None)  # meta has none
    deg = paper(**over)
    for params in covering_params(deg):
        hr = torch.empty(4, 3, 160, 160, device="meta")
        target, lr = deg.paired_crop(*deg.apply(hr, params), params)
        assert lr.shape == (4, 3, 16, 16) and target.shape == (4, 3, 64, 64) and lr.device.type == "meta"


def test_apply_makes_no_host_read_nor_data_dependent_op_on_real_tensors():
    deg = paper()
    hr = photo_batch()
    for params in covering_params(deg):
        with OpLog() as log:
            _, lr = deg.paired_crop(*deg.apply(hr, params), params)
        assert not [op for op in log.ops if op in HOST_READS]
        assert torch.isfinite(lr).all()


def test_a_host_read_in_the_pipeline_would_be_caught(monkeypatch):
    """The two checks above can fail: the old stage-2 branch ``if bool(blur2.any())`` trips both."""
    deg = paper()
    params = covering_params(deg)[0]
    real_filter = realesrgan.filter2d

    def branching_filter(x, k, be):
        if bool((k != 0).any()):
            return real_filter(x, k, be)
        return x

    monkeypatch.setattr(realesrgan, "filter2d", branching_filter)
    with OpLog() as log:
        deg.apply(photo_batch(), params)
    assert torch.ops.aten._local_scalar_dense.default in log.ops
    monkeypatch.setattr(realesrgan, "noise_generator", lambda device, seed: None)
    with pytest.raises(RuntimeError, match="meta"):
        deg.apply(torch.empty(4, 3, 160, 160, device="meta"), params)


def test_the_constants_are_built_once_per_device():
    """torch.tensor(list) is an aten.lift_fresh (on a GPU, a blocking host-to-device copy): the
    JPEG tables, DCT, colour matrices, rounding biases, grids and identity kernels are made on
    the first call only."""
    deg = paper()
    hr = photo_batch()
    params = covering_params(deg)
    deg.apply(hr, params[0])  # warm
    with OpLog() as log:
        for p in params:
            deg.apply(hr, p)
    fresh = [op for op in log.ops if op is torch.ops.aten.lift_fresh.default]
    assert fresh == []
    per_call = len(log.ops) / len(params)
    print(f"aten ops per degradation call (batch of 4, torch backend): {per_call:.0f}", file=sys.stderr)


def test_the_per_batch_usm_kernel_is_not_copied_again_for_every_batch():
    """With usm_on_load off, the USM blur's 1-D kernel is made once per device and dtype: a
    float64 -> float32 copy of it on every batch would be, on a GPU, a blocking host-to-device
    copy (the host waits for the device)."""
    from srcore.degrade.usm import usm_kernel_1d

    deg = paper(usm_on_load=False)
    size = usm_kernel_1d(deg.params.usm_radius).numel()
    hr = photo_batch(n=2, size=96)
    params = covering_params(deg, n=2)
    deg.apply(hr, params[0])  # warm

    class Copies(OpLog):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default:
                self.ops.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    with Copies() as log:
        deg.apply(hr, params[1])
    assert (size,) not in log.ops


# ------------------------------------------------------------------ bucketed resize sizes
def test_bucketed_rounds_to_the_nearest_multiple_and_never_below_one_bucket():
    assert [bucketed(v, 8) for v in (1, 3, 4, 11, 12, 13, 60, 600)] == [8, 8, 8, 8, 16, 16, 64, 600]
    assert [bucketed(v, 1) for v in (1, 7, 599)] == [1, 7, 599]


def test_resize_bucket_bounds_the_shapes_the_pipeline_sees(monkeypatch):
    """On the paper's 400 px crops: stage 1 and 2 sizes are multiples of 8 and few with buckets,
    hundreds without; bucket 1 keeps the official sizes."""
    shapes = {1: set(), 8: set()}
    for bucket in shapes:
        deg = paper(resize_bucket=bucket)
        hr = torch.empty(2, 3, 400, 400, device="meta")
        for seed in range(300):
            p = deg.sample_params(2, torch.Generator().manual_seed(seed))
            for r, divisor in ((p["resize1"], None), (p["resize2"], 4)):
                shapes[bucket].add((divisor, deg._random_resize(hr if divisor is None else hr[..., :100, :100],
                                                               (400, 400), r, divisor, "torch").shape[-1]))
    assert all(size % 8 == 0 for _, size in shapes[8])
    assert len(shapes[8]) <= 90 < len(shapes[1])
    one = paper(resize_bucket=1)
    r = {"type": "down", "scale": 0.37, "mode": "bilinear"}
    assert one._random_resize(torch.empty(1, 3, 400, 400, device="meta"), (400, 400), r, None, "torch").shape[-1] \
        == math.floor(400 * 0.37)


@pytest.mark.parametrize("value", [0, 65, 2.5, True])
def test_a_bad_resize_bucket_is_refused_in_pre_flight(value):
    params = {**paper_realesrgan_params(), "scale": 4, "gt_patch": 64, "resize_bucket": value}
    with pytest.raises(ValueError, match="degradation.resize_bucket=.* must be an integer in \\[1, 64\\]"):
        validate_degradation("realesrgan", params)


# ------------------------------------------------------------------ torch vs OpenCV, noise on
def test_the_torch_pipeline_with_noise_matches_the_opencv_path_in_distribution():
    """Same parameters, both backends, noise on (the paper's ranges): the two differ in their
    noise realisations and JPEG codec only, so per image the LR means agree, and the noise each
    adds (LR with noise minus LR of the same parameters with zero noise) has the same size."""
    hr = photo_batch(n=8, size=192)
    stats = []
    for seed in range(3):
        deg_t, deg_c = paper("torch"), paper("cv2")
        params = deg_t.sample_params(8, torch.Generator().manual_seed(100 + seed))
        quiet = {**params}
        for key in ("noise1", "noise2"):
            quiet[key] = {**params[key], "sigma": torch.zeros(8), "poisson_scale": torch.zeros(8)}
        for deg in (deg_t, deg_c):
            _, noisy = deg.apply(hr, params)
            _, clean = deg.apply(hr, quiet)
            stats.append((noisy.mean((1, 2, 3)), (noisy - clean).std((1, 2, 3))))
    mean_t, std_t = (torch.cat(v) for v in zip(*stats[0::2]))
    mean_c, std_c = (torch.cat(v) for v in zip(*stats[1::2]))
    assert (mean_t - mean_c).abs().max() * 255 < 1.5  # levels
    ratio = std_t / std_c
    print(f"noise std torch/cv2 per image: mean {float(ratio.mean()):.3f}, range [{float(ratio.min()):.2f}, {float(ratio.max()):.2f}]; "
          f"mean |LR mean diff| {float((mean_t - mean_c).abs().mean()) * 255:.2f} levels; noise std {float(std_c.mean()) * 255:.1f} levels", file=sys.stderr)
    assert 0.9 < float(ratio.mean()) < 1.1, ratio
    assert float(ratio.min()) > 0.6 and float(ratio.max()) < 1.6, ratio
    assert float(std_c.mean()) * 255 > 3  # the noise is there to be compared


def test_tf32_is_switched_through_the_current_api_and_restored():
    """On CUDA the JPEG codec runs with TF32 off and the model step as train.tf32 says, through
    PyTorch's fp32_precision settings where it has them (mixing them with allow_tf32 raises);
    the settings are only set, never a CUDA call, so this runs on a CPU-only build too."""
    from srcore.degrade.jpeg import exact_arithmetic
    from srcore.tf32 import cuda_tf32

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy allow_tf32 flags")
    before = matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    with cuda_tf32(torch.device("cuda"), True):
        assert (matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "tf32")
        with exact_arithmetic(torch.device("cuda")):
            assert (matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("ieee", "ieee")
        assert matmul.fp32_precision == "tf32"
    assert (matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
    with cuda_tf32(torch.device("cpu"), True):
        assert (matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
