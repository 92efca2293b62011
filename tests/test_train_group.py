"""A fused group (srcore.train_group) against the same jobs trained alone (srcore.train.train): per-job
losses and weights, each job's own masks, checkpoints a single job resumes, a job failing alone,
resume of a killed group and of jobs at different iterations."""
import math

import pytest
import torch

from srcore import noise
from srcore.data import TrainPatches, builtin_images
from srcore.degrade import Bicubic
from srcore.models import build_model
from srcore.train import Interrupted, train
from srcore.train_group import GroupJob, check_group, train_group
from tests.test_train import Crash, tiny_settings

# float tolerance of a fused job against the same job alone with the vmap kernel (a GPU's: the K
# networks as grouped convolutions, the same arithmetic in another order); the CPU's "loop" kernel
# is bit-identical
LOSS_RTOL, WEIGHT_RTOL = 1e-5, 1e-3


def job(tmp_path, name, seed=0, p=0.5, position="last", regularizers=None, degrade=None, **kw):
    torch.manual_seed(seed)
    regs = regularizers if regularizers is not None else [
        {"name": "dropout", "position": position, "p": p, "kind": "channel"}]
    model = build_model("srresnet", num_feat=8, num_block=2, regularizers=regs)
    patches = TrainPatches(builtin_images("train")[:2], patch=32, seed=seed)
    losses = {}

    def log_metrics(metrics, step):
        if "train/loss" in metrics:
            losses[step] = metrics["train/loss"]
    cfg = tiny_settings(seed=seed, **kw)
    return GroupJob(model, patches, degrade or Bicubic(4), cfg, tmp_path / f"{name}.pt", log_metrics=log_metrics), losses


def alone(tmp_path, name, **kw):
    j, losses = job(tmp_path, name, **kw)
    ema = train(j.model, j.patches, j.degrade, j.cfg, j.checkpoint, log_metrics=j.log_metrics)
    return losses, j.model.state_dict(), ema.state_dict()


def weights_close(a, b, rtol=WEIGHT_RTOL):
    for k in a:
        gap = (a[k].float() - b[k].float()).norm() / b[k].float().norm().clamp_min(1e-12)
        assert gap <= rtol, (k, gap.item())


GRID = [dict(seed=0, p=0.1), dict(seed=1, p=0.1), dict(seed=0, p=0.5), dict(seed=1, p=0.5)]


def test_a_fused_group_of_four_trains_each_job_as_it_trains_alone(tmp_path):
    """On the CPU (kernel "loop") bit for bit; with vmap (a GPU's kernel) within float tolerance."""
    solo = [alone(tmp_path, f"solo{k}", channels_last=True, **kw) for k, kw in enumerate(GRID)]
    for kernel in ("loop", "vmap"):
        pairs = [job(tmp_path, f"{kernel}{k}", channels_last=True, **kw) for k, kw in enumerate(GRID)]
        out = train_group([j for j, _ in pairs], kernel=kernel)
        for k, ((j, losses), (solo_losses, solo_model, solo_ema)) in enumerate(zip(pairs, solo)):
            assert sorted(losses) == sorted(solo_losses) == list(range(1, 13))
            if kernel == "loop":
                assert losses == solo_losses
                for got, want in ((j.model.state_dict(), solo_model), (out[k].state_dict(), solo_ema)):
                    assert all(torch.equal(got[n], want[n]) for n in want), (k, kernel)
                continue
            for step in losses:
                assert math.isclose(losses[step], solo_losses[step], rel_tol=LOSS_RTOL), (k, step)
            weights_close(j.model.state_dict(), solo_model)
            weights_close(out[k].state_dict(), solo_ema)
        # and the jobs differ from each other (own seeds, own p, own masks)
        assert pairs[0][1][12] != pairs[1][1][12] and pairs[0][1][12] != pairs[2][1][12]


def test_each_fused_job_draws_its_own_masks_as_alone():
    """The multipliers a member draws from its stream equal the masks its network draws alone."""
    torch.manual_seed(3)
    model = build_model("srresnet", num_feat=8, num_block=2, regularizers=[
        {"name": "dropout", "position": "all", "p": 0.3, "kind": "channel"},
        {"name": "droppath", "rate": 0.2, "schedule": "linear"}]).train()
    x = torch.rand(2, 3, 8, 8)
    with noise.recording() as plan:
        model(x)
    state = torch.get_rng_state()
    alone_out = model(x)
    torch.set_rng_state(state)
    multipliers = [noise.make(d) for d in plan]
    with noise.replaying(multipliers):
        replayed = model(x)
    assert torch.equal(alone_out, replayed)
    assert {d.kind for d in plan} == {"feature_dropout", "drop_path"}


def test_a_fused_checkpoint_resumes_alone_and_ends_where_the_fused_run_ends(tmp_path):
    pairs = [job(tmp_path, f"g{k}", **kw) for k, kw in enumerate(GRID[:2])]
    crash_at = {"n": 0}

    def stop():
        crash_at["n"] += 1
        return crash_at["n"] == 6  # after iteration 6
    with pytest.raises(Interrupted):
        train_group([j for j, _ in pairs], should_stop=stop)
    assert torch.load(tmp_path / "g0.pt", weights_only=True)["iteration"] == 6
    # job 1 alone from the fused checkpoint; job 0 in a new group of one
    j1, _ = job(tmp_path, "g1", **GRID[1])
    ema1 = train(j1.model, j1.patches, j1.degrade, j1.cfg, j1.checkpoint)
    j0, _ = job(tmp_path, "g0", **GRID[0])
    ema0 = train_group([j0])[0]
    full = [job(tmp_path, f"full{k}", **kw) for k, kw in enumerate(GRID[:2])]
    ref = train_group([j for j, _ in full])
    weights_close(ema0.state_dict(), ref[0].state_dict(), rtol=1e-6)
    weights_close(ema1.state_dict(), ref[1].state_dict(), rtol=WEIGHT_RTOL)


class Kill(BaseException):
    """The process dying (not an exception a job's own bookkeeping would end that job alone for)."""


def test_a_killed_group_resumes_bit_identically(tmp_path):
    def make(prefix):
        return [job(tmp_path, f"{prefix}{k}", **kw)[0] for k, kw in enumerate(GRID)]

    ref = [m.state_dict() for m in train_group(make("ref"))]
    jobs = make("run")
    jobs[2].on_iteration = lambda it: (_ for _ in ()).throw(Kill()) if it == 10 else None
    with pytest.raises(Kill):
        train_group(jobs)  # killed after iteration 10: checkpoints at 8
    resumed = [m.state_dict() for m in train_group(make("run"))]
    for a, b in zip(ref, resumed):
        for k in a:
            assert torch.equal(a[k], b[k]), k


class NaNAfter(Bicubic):
    def __init__(self, iteration):
        super().__init__(4)
        self.calls, self.iteration = 0, iteration

    def __call__(self, hr, g, crop=None):
        self.calls += 1
        target, lr = super().__call__(hr, g, crop)
        return (target * math.nan if self.calls >= self.iteration else target), lr


def test_a_job_whose_loss_turns_nan_fails_alone(tmp_path):
    pairs = [job(tmp_path, f"n{k}", **kw) for k, kw in enumerate(GRID[:3])]
    pairs[1][0].degrade = NaNAfter(5)
    out = train_group([j for j, _ in pairs])
    assert isinstance(out[1], FloatingPointError) and "at iteration 5" in str(out[1])
    solo = [alone(tmp_path, f"s{k}", **kw) for k, kw in ((0, GRID[0]), (2, GRID[2]))]
    for k, (losses, model, ema) in zip((0, 2), solo):
        weights_close(out[k].state_dict(), ema)
    assert torch.load(tmp_path / "n1.pt", weights_only=True)["iteration"] == 4  # its last good checkpoint


def test_jobs_at_different_iterations_train_together(tmp_path):
    j0, _ = job(tmp_path, "late", **GRID[0])
    with pytest.raises(Crash):
        train(j0.model, j0.patches, j0.degrade, j0.cfg, j0.checkpoint,
              on_iteration=lambda it: (_ for _ in ()).throw(Crash()) if it == 8 else None)
    pairs = [job(tmp_path, "late", **GRID[0]), job(tmp_path, "early", **GRID[1])]
    out = train_group([j for j, _ in pairs])
    assert sorted(pairs[0][1]) == list(range(9, 13)) and sorted(pairs[1][1]) == list(range(1, 13))
    _, _, ema0 = alone(tmp_path, "ref0", **GRID[0])
    _, _, ema1 = alone(tmp_path, "ref1", **GRID[1])
    weights_close(out[0].state_dict(), ema0)
    weights_close(out[1].state_dict(), ema1)


def test_an_exception_in_one_jobs_callbacks_ends_that_job_alone(tmp_path):
    pairs = [job(tmp_path, f"c{k}", **kw) for k, kw in enumerate(GRID[:2])]
    pairs[0][0].on_iteration = lambda it: (_ for _ in ()).throw(RuntimeError("its folder is gone")) if it == 3 else None
    out = train_group([j for j, _ in pairs])
    assert isinstance(out[0], RuntimeError) and not isinstance(out[1], BaseException)
    assert sorted(pairs[1][1]) == list(range(1, 13)) and max(pairs[0][1]) == 3


def test_jobs_that_cannot_be_stacked_are_refused(tmp_path):
    a, _ = job(tmp_path, "a", position="last")
    b, _ = job(tmp_path, "b", position="middle")
    with pytest.raises(ValueError, match="other sites"):
        check_group([a, b])
    c, _ = job(tmp_path, "c", batch_size=4)
    with pytest.raises(ValueError, match="train.batch_size"):
        check_group([a, c])
