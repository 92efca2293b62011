"""One job on several ranks (DistributedDataParallel, gloo on the CPU): the training loop.

The N-rank loop is compared with independent computations: the same global batch trained by
one rank, and the same N-rank run uninterrupted."""
import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from srcore.data import KeyRange, TrainPatches, builtin_images, shard_keys
from srcore.degrade import Bicubic
from srcore.distributed import connect, disconnect, rank_seed
from srcore.models import build_model
from srcore.train import train
from tests.test_train import Crash, tiny_settings

# The 2-rank loss against the 1-rank loss of the same global batch: the ranks' gradients are
# averaged in another order than one rank sums them, so the weights drift apart by float32
# rounding; over 20 Adam steps of this network the losses stay within this relative gap.
LOSS_RTOL = 1e-5  # measured: 2.3e-7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_job(seed=0, position="none"):
    torch.manual_seed(seed)
    model = build_model("srresnet", num_feat=8, num_block=2,
                        regularizers=[{"name": "dropout", "position": position, "p": 0.5, "kind": "channel"}])
    return model, TrainPatches(builtin_images("train")[:2], patch=32, seed=seed)


def degradation(name):
    if name == "bicubic":
        return Bicubic(4)
    from tests.degrade_params import paper_realesrgan
    return paper_realesrgan("cv2", gt_patch=32)


def averaging_step_instead_of_ddp(state, model, cfg, device, taps, first, ranks):
    """The step a rank of a CUDA-graphed job falls back to (and whose gradient average follows each
    replay): the local backward, then one all-reduce of the flattened gradients; no DDP."""
    import srcore.train as T

    autocast = dict(device_type=device.type, dtype=torch.float32, enabled=False)
    return T.averaging_step(state, model, getattr(model, "regularizers", ()), taps, autocast, device, cfg, ranks)


def run_rank(rank, world, port, runs):
    """One rank of jobs run one after the other (each its own process group), or the whole of each
    when world is 1. ``runs``: (folder, settings, options); rank 0 saves each job's logged losses
    and final weights to ``<folder>/result.pt``. Options: ``position`` (dropout's), ``degrade``
    (bicubic | realesrgan), ``step`` (ddp | averaging), ``crash_at``: every rank raises after that
    iteration (what a kill of the whole job leaves: its last checkpoint)."""
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timeout=datetime.timedelta(seconds=120)) \
        if world > 1 else None
    for k, (out, settings, options) in enumerate(runs):
        _run_one(rank, world, dist.PrefixStore(f"run{k}", store) if store else None, out, settings, **options)


def _run_one(rank, world, store, out, settings, crash_at=None, position="none", degrade="bicubic", step="ddp"):
    import srcore.train as T

    distributed_step = T._distributed_step
    if step == "averaging":
        T._distributed_step = averaging_step_instead_of_ddp
    ranks = connect(rank, world, store, torch.device("cpu"), timeout=datetime.timedelta(seconds=120)) \
        if world > 1 else None
    losses = {}

    def log_metrics(metrics, step):
        if "train/loss" in metrics:
            losses[step] = metrics["train/loss"]

    def on_iteration(iteration):
        if iteration == crash_at:
            raise Crash(iteration)

    model, patches = tiny_job(position=position)
    try:
        ema = train(model, patches, degradation(degrade), tiny_settings(**settings), out / "checkpoint.pt",
                    log_metrics=log_metrics if rank == 0 else (lambda m, s: None), on_iteration=on_iteration,
                    ranks=ranks)
    except Crash:
        return
    finally:
        T._distributed_step = distributed_step
        if world > 1:
            disconnect()
    if rank == 0:
        torch.save({"losses": losses, "model": model.state_dict(), "ema": ema.state_dict()}, out / "result.pt")


def run_jobs(world, *runs):
    """``runs`` ((folder, settings, options) each) one after the other on ``world`` ranks (spawned
    once); each job's result (``run_rank``), None for a crashed one."""
    for out, _, _ in runs:
        out.mkdir(parents=True, exist_ok=True)
    if world == 1:
        run_rank(0, 1, None, list(runs))
    else:
        mp.spawn(run_rank, args=(world, free_port(), list(runs)), nprocs=world)
    return [torch.load(out / "result.pt", weights_only=True) if (out / "result.pt").exists() else None
            for out, _, _ in runs]


def run_job(world, out, settings, **options):
    return run_jobs(world, (out, settings, options))[0]


def test_the_ranks_share_each_iterations_keys_as_one_rank_draws_them():
    keys = range(8, 24)  # iterations 3..6 of a batch of 4
    shards = [shard_keys(keys, 4, r, 2) for r in range(2)]
    assert shards == [[8, 9, 12, 13, 16, 17, 20, 21], [10, 11, 14, 15, 18, 19, 22, 23]]
    assert [list(KeyRange(2, 6, 4, r, 2)) for r in range(2)] == shards
    assert list(KeyRange(2, 6, 4)) == list(keys)
    assert rank_seed(7, 0) == 7 and len({rank_seed(7, r) for r in range(4)}) == 4 and rank_seed(7, 1) < 2**32


# 20 iterations of the global batch 4, logging every loss; bicubic degradation (no draws), no dropout
SAME_BATCHES = dict(iterations=20, batch_size=4, periods=(10, 10), log_every=1, ckpt_every=10, superbatch=4,
                    prefetch=2)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """A 2-rank DDP run of SAME_BATCHES, and the same with the averaging step (one process pair)."""
    root = tmp_path_factory.mktemp("two")
    ddp, averaged = run_jobs(2, (root / "ddp", SAME_BATCHES, {}), (root / "averaged", SAME_BATCHES, {"step": "averaging"}))
    return {"ddp": ddp, "averaged": averaged}


def test_two_ranks_train_as_one_rank_with_the_same_global_batch(tmp_path, two_ranks):
    """Bicubic degradation (no draws) and no dropout: the two ranks' half-batches are the one rank's
    batch, so the loss of every iteration matches within float rounding (LOSS_RTOL)."""
    one, two = run_job(1, tmp_path / "one", SAME_BATCHES), two_ranks["ddp"]
    assert sorted(one["losses"]) == sorted(two["losses"]) == list(range(1, 21))
    gaps = [abs(two["losses"][i] - one["losses"][i]) / abs(one["losses"][i]) for i in range(1, 21)]
    print(f"2 ranks vs 1, 20 iterations: largest relative loss gap {max(gaps):.2e}")
    assert max(gaps) < LOSS_RTOL, gaps
    assert gaps[0] < 1e-6  # the same weights and batch: the first losses differ only by the mean's rounding
    for k, w in one["model"].items():
        torch.testing.assert_close(two["model"][k], w, rtol=1e-3, atol=1e-5, msg=k)


def test_the_gradient_average_of_a_graphed_job_trains_as_ddp(tmp_path, two_ranks):
    """A CUDA-graphed job's ranks average their gradients with one all-reduce after the replay,
    not DDP (unrun on a GPU here): its eager form, on the CPU, trains as DDP does, bit for bit
    (two ranks: each gradient is (a + b) / 2 either way)."""
    ddp, averaged = two_ranks["ddp"], two_ranks["averaged"]
    assert averaged["losses"] == ddp["losses"]
    for name, w in ddp["model"].items():
        assert torch.equal(averaged["model"][name], w), name


def test_two_ranks_killed_after_a_checkpoint_resume_bit_identically(tmp_path):
    """Dropout on (masks drawn per rank): the checkpoint holds both ranks'
    random states, and a 2-rank run stopped after its checkpoint at 10 (in a super-batch: K = 4)
    and resumed ends with the weights of the same run uninterrupted, bit for bit."""
    settings = dict(iterations=16, batch_size=4, periods=(8, 8), log_every=2, ckpt_every=10, superbatch=4,
                    prefetch=2)
    kw = {"position": "last"}
    full, _, resumed = run_jobs(2, (tmp_path / "full", settings, kw),
                                (tmp_path / "part", settings, {**kw, "crash_at": 13}),
                                (tmp_path / "part", settings, kw))
    assert sorted(resumed["losses"]) == [12, 14, 16]  # the rerun trained from the checkpoint at 10
    saved = torch.load(tmp_path / "part" / "checkpoint.prev.pt", weights_only=True)  # the crashed run's last
    assert saved["iteration"] == 10 and saved["ranks"] == 2 and len(saved["rng_ranks"]) == 1
    assert not torch.equal(saved["rng"]["degradation"], saved["rng_ranks"][0]["degradation"])  # seeded by rank
    assert not torch.equal(saved["rng"]["torch"], saved["rng_ranks"][0]["torch"])
    for key in ("model", "ema"):
        for name, w in full[key].items():
            assert torch.equal(resumed[key][name], w), f"{key}.{name}"
    assert {i: resumed["losses"][i] for i in (12, 14, 16)} == {i: full["losses"][i] for i in (12, 14, 16)}
