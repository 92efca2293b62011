"""The GPU engine's pieces, checked on the CPU against the plain path they replace: crops gathered
from packed images vs per-sample crops, super-batches and prefetching vs one batch at a time
(same batches, same generator states, bit-identical training and resume), the CUDA-graph step's
fallback to the eager step, its capture keys, and the loss window."""
import logging
import math

import pytest
import torch

from srcore.data import TrainPatches, builtin_images
from srcore.degrade import Bicubic
from srcore.models import build_model
from srcore.regularizers import REGULARIZERS, Regularizer
from srcore.regularizers.adaptive_dropout import AdaptiveDropout
from srcore.train import LossWindow, TrainingState, train
from srcore.train_batches import Prefetch, TrainingBatches, degraded_views
from srcore.train_step import CudaGraphStep, EagerStep, SiteOutputs, capture_key
from tests.degrade_params import paper_realesrgan
from tests.test_train import Crash, tiny_settings


def realesrgan(gt_patch=32, backend="cv2"):
    """The paper's degradation without USM (the crops are taken as they are)."""
    return paper_realesrgan(backend, gt_patch, usm=False, usm_on_load=False)


# ------------------------------------------------------------------ crops gathered on the device
@pytest.mark.parametrize("hflip", [True, False])
def test_a_batch_gathered_from_packed_images_equals_the_per_sample_crops(hflip):
    images = builtin_images("train")
    host = TrainPatches(images, patch=80, seed=5, hflip=hflip)
    packed = TrainPatches(images, patch=80, seed=5, hflip=hflip).to("cpu")  # the GPU store, on the CPU
    assert packed.packed and not host.packed
    for keys in (range(16), range(4096, 4160), [3, 10**12, 7, 7]):
        expected = torch.stack([host[k] for k in keys])  # what the DataLoader collates
        got = packed.batch(keys)
        assert got.dtype == torch.uint8 and got.is_contiguous()
        assert torch.equal(got, expected)
        assert torch.equal(host.batch(keys), expected)
    assert sum(torch.equal(host[k], host[k].flip(-1)) for k in range(64)) < 64  # flips do happen


def test_the_jobs_of_a_group_share_one_copy_of_their_images():
    base = TrainPatches(builtin_images("train")[:3], patch=48, seed=0)
    other = base.with_seed(7)
    base.to("cpu")  # packing one packs both (a GPU holds the set once for the whole group)
    assert other.packed and other.images[0].data_ptr() == base.images[0].data_ptr()
    alone = TrainPatches(builtin_images("train")[:3], patch=48, seed=7)
    assert torch.equal(other.batch(range(6)), torch.stack([alone[k] for k in range(6)]))


def test_small_images_are_padded_before_packing():
    images = [("small", builtin_images("train")[0][1][:40, :50])]  # smaller than the patch
    host, packed = TrainPatches(images, 64, seed=1), TrainPatches(images, 64, seed=1).to("cpu")
    assert torch.equal(packed.batch(range(8)), torch.stack([host[k] for k in range(8)]))


# ------------------------------------------------------------------ super-batches and prefetch
def _batches(degrade, gen_seed=0, start=0, resume_from=None, iterations=11, **kw):
    patches = TrainPatches(builtin_images("train")[:3], patch=kw.pop("patch", 32), seed=2)
    gen = torch.Generator().manual_seed(gen_seed)
    made = TrainingBatches(patches, degrade, gen, batch_size=3, iterations=iterations, start=start,
                           device=torch.device("cpu"), resume_from=resume_from, **kw)
    try:
        return list(made), gen
    finally:
        made.close()


class Recorder(Bicubic):
    """Bicubic plus a draw from the generator per batch (so the stream's position matters), and
    a ``many`` that records the super-batches it is given."""

    def __init__(self):
        super().__init__(4)
        self.calls = []

    def __call__(self, hr, g, crop=None):
        shift = torch.rand(1, generator=g).item() * 0.01
        target, lr = super().__call__(hr, g, crop)
        return target, lr + shift

    def many(self, hrs, g, views=1):
        self.calls.append(len(hrs))
        return [degraded_views(self, hr, g, views) for hr in hrs]


@pytest.mark.parametrize("superbatch,prefetch", [(1, 2), (4, 0), (4, 3), (16, 1)])
def test_super_batches_and_prefetch_make_the_same_batches(superbatch, prefetch):
    plain, gen_plain = _batches(Recorder())
    deg = Recorder()
    got, gen = _batches(deg, superbatch=superbatch, prefetch=prefetch)
    assert [b.iteration for b in got] == list(range(1, 12))
    for a, b in zip(plain, got):
        assert torch.equal(a.hr, b.hr) and torch.equal(a.lr, b.lr)
    assert torch.equal(gen.get_state(), gen_plain.get_state())
    # super-batches start at iterations 1, K + 1, ...: calls of K batches, the last one shorter
    expected = [min(superbatch, 11 - k) for k in range(0, 11, superbatch)] if superbatch > 1 else []
    assert deg.calls == [k for k in expected if k > 1]


def test_loader_workers_feed_the_prefetch_thread_the_same_batches():
    plain, _ = _batches(Recorder(), iterations=5)
    got, _ = _batches(Recorder(), iterations=5, superbatch=2, prefetch=2, num_workers=2)
    for a, b in zip(plain, got):
        assert torch.equal(a.hr, b.hr) and torch.equal(a.lr, b.lr)


def test_each_batch_says_where_the_degradation_resumes_and_a_resume_draws_the_same_batches():
    plain, _ = _batches(Recorder())
    got, _ = _batches(Recorder(), superbatch=4, prefetch=2)
    # iteration 6 is inside the super-batch 5-8: resume draws it again from its start
    assert got[5].resume.iteration == 5 and got[7].resume.iteration == 9
    for after in (5, 6, 8):
        resume = got[after - 1].resume
        gen_seed_state = resume.state
        deg = Recorder()
        patches = TrainPatches(builtin_images("train")[:3], patch=32, seed=2)
        gen = torch.Generator()
        gen.set_state(gen_seed_state)
        again = list(TrainingBatches(patches, deg, gen, batch_size=3, iterations=11, start=after,
                                     device=torch.device("cpu"), superbatch=4, resume_from=resume.iteration))
        assert [b.iteration for b in again] == list(range(after + 1, 12))
        for a, b in zip(plain[after:], again):
            assert torch.equal(a.hr, b.hr) and torch.equal(a.lr, b.lr)


def test_views_come_through_super_batches_unchanged():
    deg = realesrgan()
    plain, _ = _batches(deg, patch=48, iterations=4, views=2)
    got, _ = _batches(deg, patch=48, iterations=4, views=2, superbatch=3, prefetch=1)
    assert plain[0].lr.shape[0] == 6  # two views of 3 GT patches
    for a, b in zip(plain, got):
        assert torch.equal(a.hr, b.hr) and torch.equal(a.lr, b.lr)


def test_an_error_while_making_batches_reaches_the_loop():
    def broken():
        yield (1,)
        raise ValueError("bad image 7")

    with pytest.raises(ValueError, match="bad image 7"):
        list(Prefetch(broken, 2, torch.device("cpu")))


def test_closing_the_prefetch_stops_its_thread():
    made = []

    def endless():
        while True:
            made.append(1)
            yield (len(made),)

    prefetch = Prefetch(endless, 2, torch.device("cpu"))
    assert next(iter(prefetch)) == (1,)
    prefetch.close()
    assert not prefetch.thread.is_alive() and len(made) <= 5


# ------------------------------------------------------------------ the training loop with them
def _run(tmp_path, name, degrade, crash_at=None, regularizers=(), **kw):
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2, regularizers=list(regularizers))
    patches = TrainPatches(builtin_images("train")[:2], patch=48, seed=0)

    def on_iteration(it):
        if it == crash_at:
            raise Crash

    ema = train(model, patches, degrade, tiny_settings(**kw), tmp_path / f"{name}.pt", on_iteration=on_iteration)
    return model.state_dict(), ema.state_dict()


DROPOUT = [{"name": "dropout", "position": "last", "p": 0.5, "kind": "channel"}]


@pytest.mark.parametrize("regularizers", [DROPOUT, [{"name": "simple_align", "lam": 1.0}]], ids=["dropout", "views"])
def test_training_with_super_batches_and_prefetch_is_bit_identical(tmp_path, regularizers):
    deg = realesrgan(gt_patch=48)
    ref = _run(tmp_path, "ref", deg, regularizers=regularizers)
    fast = _run(tmp_path, "fast", deg, regularizers=regularizers, superbatch=5, prefetch=2)
    for a, b in zip(ref, fast):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_a_run_resumed_inside_a_super_batch_ends_bit_identical(tmp_path):
    deg = realesrgan(gt_patch=48)
    full = _run(tmp_path, "full", deg, regularizers=DROPOUT, superbatch=3, prefetch=2)
    with pytest.raises(Crash):  # checkpoint at 8 (ckpt_every 4): the super-batch 7-9 is half used
        _run(tmp_path, "part", deg, regularizers=DROPOUT, superbatch=3, prefetch=2, crash_at=10)
    assert torch.load(tmp_path / "part.pt", weights_only=True)["rng"]["degradation_from"] == 7
    resumed = _run(tmp_path, "part", deg, regularizers=DROPOUT, superbatch=3, prefetch=2)
    for a, b in zip(full, resumed):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_a_checkpoint_from_one_super_batch_size_resumes_with_another(tmp_path):
    deg = realesrgan(gt_patch=48)
    full = _run(tmp_path, "full", deg, regularizers=DROPOUT)
    with pytest.raises(Crash):
        _run(tmp_path, "part", deg, regularizers=DROPOUT, superbatch=3, crash_at=10)
    resumed = _run(tmp_path, "part", deg, regularizers=DROPOUT, superbatch=5, prefetch=1)
    for a, b in zip(full, resumed):
        for k in a:
            assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ the CUDA-graph step
def _step_parts(regularizers=DROPOUT):
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2, regularizers=regularizers).train()
    state = TrainingState(model, tiny_settings(), torch.Generator())
    eager = EagerStep(state, model, model.regularizers, SiteOutputs(model, []),
                      dict(device_type="cpu", dtype=torch.float32, enabled=False), torch.device("cpu"), False)
    return model, eager


def test_a_capture_that_fails_trains_on_eagerly_and_says_why_once(caplog):
    """Here (a CPU build) every capture fails for real: the step must fall back to the eager
    step, with one warning naming the cause, and train exactly as the eager step does."""
    torch.manual_seed(1)
    batches = [(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 8, 8)) for _ in range(4)]
    model_a, eager = _step_parts()
    torch.manual_seed(2)
    eager_losses = [eager(hr, lr)[0].item() for hr, lr in batches]
    model_b, eager_b = _step_parts()
    graphed = CudaGraphStep(eager_b, batches[0], warmup=0)
    torch.manual_seed(2)
    with caplog.at_level(logging.WARNING, logger="srcore.train"):
        graphed_losses = [graphed(hr, lr)[0].item() for hr, lr in batches]
    assert graphed_losses == eager_losses
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("CUDA graph of the training step not used (RuntimeError: ")
    assert warnings[0].endswith("; training eagerly")


def test_capture_keys_follow_what_set_iteration_changes():
    model = build_model("srresnet", num_feat=8, num_block=2, regularizers=[
        {"name": "adaptive_dropout", "p": 0.5, "w0": 0.3, "step": 5, "order": "shallow_first"}, *DROPOUT])
    ad = next(r for r in model.regularizers if isinstance(r, AdaptiveDropout))
    keys = []
    for it in range(1, 20):
        for r in model.regularizers:
            r.set_iteration(it)
        keys.append(capture_key(model.regularizers))
    # 2 mid sites + last: one switches off at 5, 10, 15 (w 0.3 -> 1)
    assert len(set(keys)) == 4 and keys[3] != keys[4] and keys[4] == keys[8]
    assert keys[-1] == ((1.0, 1.0, 1.0), None) and ad.capture_key() == (1.0, 1.0, 1.0)


def test_a_regulariser_following_the_iteration_without_a_key_is_never_graphed():
    class Schedule(Regularizer):
        name = "schedule_probe"

        def settings(self):
            return {}

        def set_iteration(self, iteration):
            self.iteration = iteration

    assert capture_key([Schedule()]) is None
    assert capture_key([REGULARIZERS["dropout"](position="last", p=0.1, kind="channel")]) == (None,)


# ------------------------------------------------------------------ the loss window
def test_a_full_loss_window_checks_itself_and_names_the_iteration():
    window = LossWindow(torch.device("cpu"), start=10, capacity=2)
    for it in (11, 12, 13):
        window.add(it, torch.tensor(1.0))
    window.add(14, torch.tensor(math.inf))
    # the window is full at 15: 13-14 are checked before 15 goes in
    with pytest.raises(FloatingPointError, match=r"loss is inf at iteration 14 \(found at iteration 14, "
                                                 r"checking iterations 13-14\)"):
        window.add(15, torch.tensor(1.0))
