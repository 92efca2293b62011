"""The training checkpoint's files and random states: what ``srcore.train.TrainingState`` writes
and resumes from (network weights files are ``srcore.models.checkpoint``'s).

Two files: the latest (``checkpoint.pt``) and the one before it (``checkpoint.prev.pt``). A
damaged latest one (a write cut short by a full disk, a truncated copy) falls back to the
previous one instead of failing every rerun. The random states are saved as plain tensors and
numbers, so a checkpoint loads with ``weights_only=True``; where a saved state does not fit this
machine, its stream is re-seeded from (seed, iteration), with one log line.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from srcore.atomic import atomic_write
from srcore.models.checkpoint import CheckpointError, read_torch_file

# Resume messages are part of the training log: one logger name for the loop and its checkpoint
# (log filters and the tests listen on "srcore.train").
log = logging.getLogger("srcore.train")

CHECKPOINT_KEYS = ("iteration", "model", "ema", "optimizer", "scheduler", "rng")


# --- Random states ---------------------------------------------------------------------------

def rng_states(gen: torch.Generator) -> dict:
    """Every random stream's state: Python's, NumPy's, torch's (CPU and CUDA) and the
    degradation generator's, tagged with its device type."""
    # Plain tensors and numbers only, so the checkpoint loads with weights_only=True.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "degradation": gen.get_state(),
        "degradation_device": gen.device.type,
    }


def reseed_value(seed: int, iteration: int) -> int:
    """A seed that is a pure function of (job seed, iteration): what a generator whose saved
    state cannot be restored on this machine continues from."""
    return int(np.random.SeedSequence([seed, iteration, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


def _saved_generator_device(states: dict) -> str:
    """The device type the degradation generator's state was saved from. Checkpoints written
    before the tag existed are told apart by size: a CUDA generator's state is 16 bytes (seed,
    offset), a CPU one's 5056 (Mersenne Twister)."""
    return states.get("degradation_device") or ("cuda" if states["degradation"].numel() == 16 else "cpu")


def restore_rng_states(states: dict, gen: torch.Generator, seed: int, iteration: int) -> None:
    """Restore every random stream. Where a saved state does not fit this machine (a checkpoint
    taken on another device type, or with another number of visible GPUs) the stream is
    re-seeded from (seed, iteration) instead, with one log line: the run continues
    deterministically, but not bit-identically to an uninterrupted one."""
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    cuda = states["cuda"]
    if torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another GPU count, or none (a CPU checkpoint): never replay the masks from iteration 1
            torch.cuda.manual_seed_all(reseed_value(seed, iteration))
            log.warning("the checkpoint holds the CUDA random states of %d GPU(s), this machine has %d: CUDA "
                        "generators re-seeded from (seed %d, iteration %d)", len(cuda), torch.cuda.device_count(),
                        seed, iteration)
    saved = _saved_generator_device(states)
    if saved == gen.device.type:
        gen.set_state(states["degradation"])
    else:  # written when the degradation drew on the training device (before its draws moved to the host)
        gen.manual_seed(reseed_value(seed, iteration))
        log.warning("the checkpoint holds a %s state of the degradation generator, which now draws on the %s: "
                    "it is re-seeded from (seed %d, iteration %d); the run continues deterministically but not "
                    "bit-identically to an uninterrupted one", saved, gen.device.type, seed, iteration)


def rank_rng_states(state: dict, rank: int, world_size: int) -> dict | None:
    """The random states rank ``rank`` of a ``world_size``-rank job resumes from: what the
    checkpoint holds for that rank (``rng`` is rank 0's, ``rng_ranks`` the others' of a job on
    several ranks), or None when it holds none (written by a job on fewer ranks). A checkpoint of
    another rank count is said in one line (rank 0): the run continues, not bit-identically."""
    saved = int(state.get("ranks", 1))
    if saved != world_size and rank == 0:
        log.warning("the checkpoint was written by a job on %d rank(s), this one runs on %d: the ranks it holds "
                    "restore their random streams, the others are re-seeded from (their seed, iteration %d); the "
                    "run continues, but not bit-identically to an uninterrupted one", saved, world_size,
                    state["iteration"])
    if rank == 0:
        return state["rng"]
    others = state.get("rng_ranks") or []
    return others[rank - 1] if rank - 1 < len(others) else None


def reseed_streams(gen: torch.Generator, seed: int, iteration: int) -> None:
    """Every random stream (``rng_states``'s) from (seed, iteration): a rank that the checkpoint
    holds no state for."""
    value = reseed_value(seed, iteration)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    gen.manual_seed(value)


# --- Checkpoint files: the latest and the one before it -------------------------------------

def previous_checkpoint(checkpoint: Path) -> Path:
    """Where the checkpoint before the latest is kept (``checkpoint.prev.pt``)."""
    return checkpoint.with_name(f"{checkpoint.stem}.prev{checkpoint.suffix}")


def write_checkpoint(checkpoint: Path, state: dict) -> None:
    """Write ``state`` atomically as the latest checkpoint; the current one, if any, becomes the
    previous one first."""
    checkpoint = Path(checkpoint)
    if checkpoint.exists():
        _keep_as_previous(checkpoint)
    atomic_write(checkpoint, lambda f: torch.save(state, f))


def _keep_as_previous(checkpoint: Path) -> None:
    """Make the current checkpoint the previous one, atomically and without ever removing the
    current one: a hard link renamed onto ``previous_checkpoint`` (a copy where the filesystem
    has no hard links). The new checkpoint then replaces the current one by its own rename."""
    previous = previous_checkpoint(checkpoint)
    tmp = checkpoint.with_name(f".{previous.name}.{os.getpid()}.tmp")  # a partial write to a job's start
    tmp.unlink(missing_ok=True)
    try:
        os.link(checkpoint, tmp)
    except OSError:
        shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, previous)


def read_training_state(path: Path) -> dict:
    """A training checkpoint file (``CheckpointError`` when it is not one)."""
    return _read_training_state(path)


def _read_training_state(path: Path) -> dict:
    state = read_torch_file(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
    return state


def read_latest_checkpoint(checkpoint: Path) -> tuple[dict | None, Path | None]:
    """The newest readable training state and its file: ``checkpoint``, else the previous one.

    A file that cannot be read (empty, truncated, damaged, or refused because it holds more than
    tensors) is renamed ``<name>.corrupt`` (kept for a look, and out of the next rotation) with a
    warning naming it; with no readable file left, training starts over, saying so.
    ``(None, None)``: start from iteration 0."""
    problems = []
    for path in (checkpoint, previous_checkpoint(checkpoint)):
        if not path.exists():
            continue
        try:
            state = _read_training_state(path)
        except CheckpointError as e:
            os.replace(path, path.with_name(path.name + ".corrupt"))
            problems.append(f"{e} (kept as {path.name}.corrupt)")
            continue
        if problems:
            log.warning("%s; resuming from the previous checkpoint %s (iteration %d)", problems[0], path,
                        state["iteration"])
        return state, path
    if problems:
        log.warning("%s; no readable checkpoint is left: training starts over from iteration 0", "; ".join(problems))
    return None, None
