"""The training engine's speed options: precision (autocast, fp16 grad scaler), channels_last,
torch.compile, no host sync per iteration, resume across devices (docs/speed.md)."""
import logging
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from srcore.data import TrainPatches, builtin_images
from srcore.degrade import Bicubic
from srcore.models import build_model
from srcore.train import TrainSettings, reseed_value, train
from sweeper import build
from sweeper.compose import compose
from sweeper.preflight import PreflightError, validate_config


def settings(**kw) -> TrainSettings:
    base = dict(iterations=12, batch_size=2, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0, periods=(6, 6),
                restart_weights=(1, 0.5), eta_min=1e-7, ema_decay=0.9, seed=0, log_every=1, val_every=100,
                ckpt_every=4, num_workers=0, device="cpu", precision="fp32", tf32=False, channels_last=False,
                compile=False, cuda_graph=True, superbatch=1, prefetch=0)
    return TrainSettings(**{**base, **kw})


class Crash(Exception):
    pass


def run(tmp_path, name, crash_at=None, degrade=Bicubic(4), position="last", **kw):
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2,
                        regularizers=[{"name": "dropout", "position": position, "p": 0.5, "kind": "channel"}])
    patches = TrainPatches(builtin_images("train")[:2], patch=32, seed=0)
    logged = []

    def log_metrics(metrics, step):
        logged.append((step, metrics))
        if step == crash_at:
            raise Crash(step)

    ema = train(model, patches, degrade, settings(**kw), tmp_path / f"{name}.pt", log_metrics=log_metrics)
    return model, ema, logged


def assert_same(a, b):
    for (k, v1), v2 in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v1, v2), k


# ------------------------------------------------------------------ config and pre-flight
def test_presets_state_the_speed_keys_and_paper_trains_in_fp32():
    paper = compose([]).train
    assert (paper.precision, paper.tf32, paper.channels_last, paper.compile) == ("fp32", False, True, False)
    for preset in ("smoke", "demo"):
        t = build.train_settings(compose([f"preset={preset}"]))
        assert t.precision in ("fp32", "bf16") and t.compile is False


@pytest.mark.parametrize("override, message", [
    ("train.precision=fp64", "train.precision='fp64' is unknown; allowed: fp32, bf16, fp16"),
    ("train.channels_last=maybe", "train.channels_last='maybe' must be true or false"),
    ("train.compile=1", "train.compile=1 must be true or false"),
    ("train.tf32=yes", "train.tf32='yes' must be true or false"),
])
def test_preflight_names_a_bad_speed_setting(override, message):
    with pytest.raises(PreflightError) as e:
        validate_config(compose(["preset=smoke", override]))
    assert str(e.value) == message


def test_train_settings_carry_the_speed_keys():
    t = build.train_settings(compose(["preset=smoke", "train.precision=bf16", "train.channels_last=true"]))
    assert (t.precision, t.channels_last, t.compile, t.tf32) == ("bf16", True, False, False)


# ------------------------------------------------------------------ precision
@pytest.mark.parametrize("precision, channels_last", [("bf16", False), ("bf16", True), ("fp16", False),
                                                     ("fp32", True)])
def test_mixed_precision_trains_close_to_fp32_and_resumes_bit_identically(tmp_path, precision, channels_last):
    ref, _, ref_log = run(tmp_path, "fp32")
    precision_kw = dict(precision=precision, channels_last=channels_last)
    full, full_ema, full_log = run(tmp_path, f"{precision}-full", **precision_kw)
    # Same data, same dropout masks: the weights move alike, the losses agree to autocast's rounding.
    for (step, a), (_, b) in zip(ref_log, full_log):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=0.05), step
    if precision != "fp32":  # autocast changed the arithmetic
        assert any(not torch.equal(a, b) for a, b in zip(ref.state_dict().values(), full.state_dict().values()))
    with pytest.raises(Crash):
        run(tmp_path, f"{precision}-part", crash_at=10, **precision_kw)
    state = torch.load(tmp_path / f"{precision}-part.pt", weights_only=True)
    assert state["iteration"] == 8
    assert ("scaler" in state) == (precision == "fp16")
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0
    torch.manual_seed(123)
    resumed, resumed_ema, _ = run(tmp_path, f"{precision}-part", **precision_kw)
    assert_same(full, resumed)
    assert_same(full_ema, resumed_ema)


def test_channels_last_trains_like_nchw(tmp_path):
    ref, ref_ema, _ = run(tmp_path, "nchw", iterations=4, position="none")
    cl, cl_ema, _ = run(tmp_path, "nhwc", iterations=4, position="none", channels_last=True)
    conv = next(p for p in cl.parameters() if p.dim() == 4)
    assert conv.is_contiguous()  # handed back in the usual layout: saved and evaluated as any model
    for a, b in zip(ref.state_dict().values(), cl.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_steps_agree_with_eager_steps(tmp_path):
    ref, _, ref_log = run(tmp_path, "eager", iterations=4, position="none", log_every=1)
    comp, _, comp_log = run(tmp_path, "compiled", iterations=4, position="none", log_every=1, compile=True)
    for (step, a), (_, b) in zip(ref_log, comp_log):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-4), step
    for a, b in zip(ref.state_dict().values(), comp.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------ no host sync per iteration
LOOP_FILES = ("srcore/train.py", "srcore/train_step.py", "srcore/train_batches.py", "srcore/schedule.py")


class HostReads(TorchDispatchMode):
    """Counts the reads of a tensor's value by the host (``aten._local_scalar_dense``: ``item``,
    ``float``, ``bool``, ``int``) made by the training loop itself (``LOOP_FILES``): on a GPU each is a wait for the device. Host-side bookkeeping tensors
    are left out: Adam's step counters (on the host unless fused) and the DataLoader's seed."""

    def __init__(self):
        super().__init__()
        self.iteration, self.reads = 1, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            frame = sys._getframe(1)
            while frame is not None and "/torch/" in frame.f_code.co_filename:
                if "/torch/optim/" in frame.f_code.co_filename or "/torch/utils/data/" in frame.f_code.co_filename:
                    return func(*args, **(kwargs or {}))
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.endswith(LOOP_FILES):
                self.reads.append(self.iteration)
        return func(*args, **(kwargs or {}))


def test_the_loop_reads_the_device_only_at_log_and_checkpoint_steps(tmp_path):
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2)
    patches = TrainPatches(builtin_images("train")[:2], patch=32, seed=0)
    counter = HostReads()

    def next_iteration(it):
        counter.iteration = it + 1

    with counter:
        train(model, patches, Bicubic(4), settings(iterations=12, log_every=6, ckpt_every=12), tmp_path / "c.pt",
              on_iteration=next_iteration)
    # 6: the finiteness check and the logged loss; 12: the same, then the weights' finiteness
    # before the checkpoint (the checkpoint's own check finds the window empty: no read). No other
    # iteration waits for the device.
    assert counter.reads == [6, 6, 12, 12, 12]


def test_a_non_finite_loss_is_named_at_the_next_check_and_no_checkpoint_is_written(tmp_path):
    def nan_after_5(hr, g, calls=[0]):
        calls[0] += 1
        target, lr = Bicubic(4)(hr, g)
        return target, lr * (float("nan") if calls[0] >= 6 else 1.0)

    with pytest.raises(FloatingPointError, match=r"loss is nan at iteration 6 \(found at iteration 8, "
                                                 r"checking iterations 5-8\)"):
        run(tmp_path, "nan", degrade=nan_after_5, log_every=100, ckpt_every=4)
    assert torch.load(tmp_path / "nan.pt", weights_only=True)["iteration"] == 4  # the last good one is kept


def test_no_checkpoint_holds_non_finite_weights(tmp_path):
    from srcore.train import TrainingState
    model = build_model("srresnet", num_feat=8, num_block=2)
    state = TrainingState(model, settings(), torch.Generator())
    state.save(tmp_path / "ok.pt", 1)
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(FloatingPointError, match="weights are not finite after iteration 2"):
        state.save(tmp_path / "ok.pt", 2)
    assert torch.load(tmp_path / "ok.pt", weights_only=True)["iteration"] == 1


# ------------------------------------------------------------------ resume across devices
def _retag_as_cuda(path):
    state = torch.load(path, weights_only=True)
    state["rng"]["degradation"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's (seed, offset)
    state["rng"]["degradation_device"] = "cuda"
    torch.save(state, path)


def test_a_checkpoint_from_another_device_resumes_reseeded_and_says_so(tmp_path, caplog):
    with pytest.raises(Crash):
        run(tmp_path, "a", crash_at=10)
    (tmp_path / "b.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    for name in ("a", "b"):
        _retag_as_cuda(tmp_path / f"{name}.pt")
    with caplog.at_level(logging.WARNING, logger="srcore.train"):
        a, _, _ = run(tmp_path, "a")
    lines = [r.getMessage() for r in caplog.records if "re-seeded" in r.getMessage()]
    assert lines == ["the checkpoint holds a cuda state of the degradation generator, which now draws on the cpu: "
                     "it is re-seeded from (seed 0, iteration 8); the run continues deterministically but not "
                     "bit-identically to an uninterrupted one"]
    b, _, _ = run(tmp_path, "b")
    assert_same(a, b)  # deterministic: the re-seed is a function of (seed, iteration)


def test_a_checkpoint_without_the_device_tag_is_told_by_the_state_size(tmp_path, caplog):
    with pytest.raises(Crash):
        run(tmp_path, "old", crash_at=10)
    state = torch.load(tmp_path / "old.pt", weights_only=True)
    del state["rng"]["degradation_device"]  # a checkpoint written before the tag
    torch.save(state, tmp_path / "old.pt")
    full, _, _ = run(tmp_path, "full")
    with caplog.at_level(logging.WARNING, logger="srcore.train"):
        resumed, _, _ = run(tmp_path, "old")
    assert not [r for r in caplog.records if "re-seeded" in r.getMessage()]
    assert_same(full, resumed)


def test_cuda_states_of_another_gpu_count_reseed_instead_of_crashing(tmp_path, monkeypatch, caplog):
    with pytest.raises(Crash):
        run(tmp_path, "gpus", crash_at=10)
    state = torch.load(tmp_path / "gpus.pt", weights_only=True)
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2  # taken with 2 GPUs
    torch.save(state, tmp_path / "gpus.pt")
    seeded = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: (_ for _ in ()).throw(IndexError("list index")))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    with caplog.at_level(logging.WARNING, logger="srcore.train"):
        run(tmp_path, "gpus")
    assert reseed_value(0, 8) in seeded  # (torch.manual_seed calls it too, with the job's seed)
    assert any("CUDA random states of 2 GPU(s), this machine has 1" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ the GPU check's CPU smoke run
@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_cpu_at_tiny_sizes(tmp_path):
    import subprocess

    from tests.conftest import ROOT
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**__import__("os").environ, "OUT_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    lines = out.strip().splitlines()
    assert lines[0] == "| check (CPU) | result |"  # step 0: the degradation
    assert "| no sync | yes (0 host reads, dispatch count) |" in lines
    assert any(line.startswith("| resize_bucket=8: batches/s") for line in lines)
    start = lines.index("| backbone | precision | channels_last | compile | cuda_graph | it/s | peak GB | note |")
    table = lines[start + 2:]
    rows = [line.split(" | ") for line in table[:next(i for i, line in enumerate(table) if not line.startswith("| "))]]
    steps = [r for r in rows if "full iteration" not in r[-1]]
    full = [r for r in rows if "full iteration" in r[-1]]
    assert len(steps) == 2 * 5 and len(full) == 2 * 2  # backbones x (fp32/bf16 configs); before/now
    assert all(r[5] != "-" for r in rows), out  # every configuration ran
    assert "two graphed runs, one seed: weights equal True" in out and "**failed**" not in out
    assert "official outputs on cpu" in out and "profile, SRResNet fp32 eager" in out
    jobs = [line for line in lines if line.startswith(("| srresnet-", "| rrdb-"))]
    assert len(jobs) == 4 and not any("no results" in j for j in jobs), out


# ------------------------------------------------------------------ training images on the device
def test_patches_moved_to_a_device_cut_the_same_crops():
    images = builtin_images("train")[:3]
    host = TrainPatches(images, patch=48, seed=3)
    moved = TrainPatches(images, patch=48, seed=3).to("cpu")  # the GPU path, on the CPU
    assert moved.device == torch.device("cpu") and moved.nbytes() == sum(im.size for _, im in images)
    for key in (0, 1, 17, 10**9):
        assert torch.equal(host[key], moved[key])


def test_a_cuda_job_keeps_its_images_on_the_gpu_when_they_fit(monkeypatch):
    import srcore.train as T

    patches = TrainPatches(builtin_images("train")[:2], patch=32, seed=0)
    moved = []
    monkeypatch.setattr(TrainPatches, "to", lambda self, device: moved.append(device) or self)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (4 * patches.nbytes(), 8 * patches.nbytes()))
    cuda = torch.device("cuda")
    T._place_images(patches, settings(device="cuda"), cuda)
    assert moved == [cuda]
    T._place_images(patches, settings(device="cuda", num_workers=2), cuda)  # workers cannot share CUDA tensors
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * patches.nbytes(), 8 * patches.nbytes()))
    T._place_images(patches, settings(device="cuda"), cuda)  # over a quarter of the free memory
    assert moved == [cuda]


def test_a_cpu_checkpoint_resumed_where_cuda_is_available_reseeds_cuda_and_says_so(tmp_path, monkeypatch, caplog):
    """A CPU run's checkpoint holds no CUDA states: on a GPU machine the CUDA generators (dropout
    masks) are re-seeded from (seed, iteration), not left at the job seed's iteration-1 stream."""
    with pytest.raises(Crash):
        run(tmp_path, "cpu", crash_at=10)
    seeded = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [])
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    with caplog.at_level(logging.WARNING, logger="srcore.train"):
        run(tmp_path, "cpu")
    assert reseed_value(0, 8) in seeded
    assert any("CUDA random states of 0 GPU(s), this machine has 1" in r.getMessage() for r in caplog.records)
