"""The training loop: schedule, EMA, determinism and resume after a kill."""
import math
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from srcore.data import TrainPatches, builtin_images
from srcore.degrade import Bicubic
from srcore.models import build_model
from srcore.regularizers import REGULARIZERS, Regularizer
from srcore.schedule import CosineAnnealingRestartLR, ema_update
from srcore.train import TrainSettings, train
from tests.conftest import ROOT, TINY, run_sweeper


def test_cosine_restart_matches_basicsr_formula():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = CosineAnnealingRestartLR(opt, periods=[10, 20], restart_weights=[1, 0.5], eta_min=0.1)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(30):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # BasicSR: lr = eta + w * 0.5 * (base - eta) * (1 + cos(pi * (t - restart) / period))
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.1 + 0.5 * 0.9 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[11] == pytest.approx(0.1 + 0.5 * 0.5 * 0.9 * (1 + math.cos(math.pi * 1 / 20)))
    assert lrs[30] == pytest.approx(0.1)


def test_multi_tensor_ema_update_is_bit_identical_to_the_per_parameter_lerp():
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2)
    ema, reference = build_model("srresnet", num_feat=8, num_block=2), build_model("srresnet", num_feat=8, num_block=2)
    reference.load_state_dict(ema.state_dict())
    for decay in (0.999, 0.9, 0.5):
        ema_update(ema, model, decay)
        with torch.no_grad():
            for e, p in zip(reference.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
            for e, b in zip(reference.buffers(), model.buffers()):
                e.copy_(b)
    for (k, a), b in zip(ema.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k


def test_ema_update_is_the_exponential_average():
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    expected = [0.9 * pa.detach() + 0.1 * pb.detach() for pa, pb in zip(a.parameters(), b.parameters())]
    ema_update(a, b, 0.9)
    for got, want in zip(a.parameters(), expected):
        torch.testing.assert_close(got.detach(), want)


class Crash(Exception):
    pass


def tiny_settings(**kw) -> TrainSettings:
    """A 12-iteration schedule with two cosine cycles; the paper's optimiser settings."""
    settings = dict(iterations=12, batch_size=2, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0, periods=(6, 6),
                    restart_weights=(1, 0.5), eta_min=1e-7, ema_decay=0.9, seed=0, log_every=1, val_every=100,
                    ckpt_every=4, num_workers=0, device="cpu",
                precision="fp32", tf32=False, channels_last=False, compile=False, cuda_graph=True, superbatch=1,
                prefetch=0)
    return TrainSettings(**{**settings, **kw})


def _tiny_run(tmp_path, name, position="none", iterations=12, seed=0, crash_at=None, degrade=Bicubic(4), **kw):
    torch.manual_seed(seed)
    model = build_model("srresnet", num_feat=8, num_block=2,
                        regularizers=[{"name": "dropout", "position": position, "p": 0.5, "kind": "channel"}])
    patches = TrainPatches(builtin_images("train")[:2], patch=32, seed=seed)
    cfg = tiny_settings(iterations=iterations, seed=seed, **kw)

    def log_metrics(metrics, step):
        if step == crash_at:
            raise Crash(step)

    ema = train(model, patches, degrade, cfg, tmp_path / f"{name}.pt", log_metrics=log_metrics)
    return model, ema


def test_training_is_deterministic_and_dropout_changes_it(tmp_path):
    m1, _ = _tiny_run(tmp_path, "a")
    m2, _ = _tiny_run(tmp_path, "b")
    m3, _ = _tiny_run(tmp_path, "c", position="last")
    for (k, v1), v2, v3 in zip(m1.state_dict().items(), m2.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert any(not torch.equal(v1, v3) for v1, v3 in zip(m1.state_dict().values(), m3.state_dict().values()))


def test_checkpoint_holds_full_state_and_resume_is_bit_identical(tmp_path):
    full, full_ema = _tiny_run(tmp_path, "full", position="last", iterations=12)
    # Interrupted: crash at iteration 10 (last checkpoint at 8), then resume in fresh objects.
    with pytest.raises(Crash):
        _tiny_run(tmp_path, "part", position="last", iterations=12, crash_at=10)
    state = torch.load(tmp_path / "part.pt", weights_only=True)
    assert state["iteration"] == 8
    assert set(state) == {"iteration", "model", "ema", "optimizer", "scheduler", "rng"}
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda", "degradation", "degradation_device",
                                 "degradation_from"}
    # Scramble the global RNGs: resume must restore them from the checkpoint.
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    resumed, resumed_ema = _tiny_run(tmp_path, "part", position="last", iterations=12, seed=0)
    for a, b in [(full, resumed), (full_ema, resumed_ema)]:
        for (k, v1), v2 in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v1, v2), k
    assert not list(tmp_path.glob(".*tmp*")), "temporary checkpoint files left behind"


def test_nan_loss_stops_the_job(tmp_path):
    with pytest.raises(FloatingPointError, match="loss is nan at iteration 1"):
        _tiny_run(tmp_path, "nan", degrade=lambda hr, g: (hr, Bicubic(4)(hr, g)[1] * float("nan")))


def _weights(job_dir):
    return torch.load(job_dir / "model.pt", weights_only=True)


def test_job_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    """A real job process is killed at a random point after its first checkpoint; the rerun
    resumes from the checkpoint and ends with bit-identical weights and metrics."""
    args = TINY + ["train.iterations=400", "train.scheduler.periods=[200,200]", "train.ckpt_every=25",
                   "train.log_every=50", "train.val_every=400",
                   "dropout.position=last", "eval.degradations=[clean,noise]"]
    run_sweeper(args, tmp_path / "a")
    job_a = next((tmp_path / "a" / "runs").iterdir())

    env = {"SR_OUTPUT_ROOT": str(tmp_path / "b"), "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "-m", "sweeper", *args], cwd=ROOT,
                            env={**__import__("os").environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "b").glob("runs/*/checkpoint.pt")):
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    job_b = next((tmp_path / "b" / "runs").iterdir())
    assert proc.returncode == -signal.SIGKILL
    assert not (job_b / "results.json").exists(), "the job finished before it could be killed"
    killed_at = torch.load(job_b / "checkpoint.pt", weights_only=True)["iteration"]
    assert 25 <= killed_at < 400

    run_sweeper(args, tmp_path / "b")
    wa, wb = _weights(job_a), _weights(job_b)
    for key in ("params", "params_ema"):
        for k in wa[key]:
            assert torch.equal(wa[key][k], wb[key][k]), f"{key}.{k} differs after resume from {killed_at}"
    import json
    ra, rb = (json.loads((j / "results.json").read_text()) for j in (job_a, job_b))
    assert ra["metrics"] == rb["metrics"]
    # The rerun resumed the same wandb run: both attempts share one deterministic id.
    dirs = sorted((job_b / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and len({d.name.rsplit("-", 1)[1] for d in dirs}) == 1


class Probe(Regularizer):
    """A regulariser using every training hook: the iteration, a tapped site, an extra loss."""

    name = "probe"
    tapped_sites = ("last",)

    def __init__(self, weight, views=1):
        super().__init__()
        self.weight, self.views, self.iterations = weight, views, []

    def settings(self):
        return {"weight": self.weight, "views": self.views}

    def set_iteration(self, iteration):
        self.iterations.append(iteration)

    def extra_loss(self, sr, hr, features):
        assert features["last"].shape[:2] == (sr.shape[0], 8)  # this pass's input of conv_last
        return self.weight * features["last"].abs().mean()


def test_training_calls_the_regularizer_hooks(tmp_path, monkeypatch):
    monkeypatch.setitem(REGULARIZERS, "probe", Probe)
    patches = TrainPatches(builtin_images("train")[:2], patch=32, seed=0)
    torch.manual_seed(0)
    model = build_model("srresnet", num_feat=8, num_block=2, regularizers=[{"name": "probe", "weight": 0.5}])
    logged = []
    train(model, patches, Bicubic(4), tiny_settings(iterations=6), tmp_path / "probe.pt",
          log_metrics=lambda metrics, step: logged.append(metrics))
    (probe,) = model.regularizers
    assert probe.iterations == [1, 2, 3, 4, 5, 6]  # once before each forward pass
    assert all(0 < m["train/probe_loss"] < m["train/loss"] for m in logged)

    two_views = build_model("srresnet", num_feat=8, num_block=2,
                            regularizers=[{"name": "probe", "weight": 0.5, "views": 2}])
    logged.clear()
    train(two_views, patches, Bicubic(4), tiny_settings(iterations=2), tmp_path / "views.pt",
          log_metrics=lambda metrics, step: logged.append(metrics))
    assert len(logged) == 2 and all(0 < m["train/probe_loss"] for m in logged)
