"""Config -> the objects a job needs: model, training degradation, data, training settings.

The one place that reads a composed job config and turns it into ``srcore`` calls; the job,
``sweeper.baseline``, ``sweeper.preview`` and the tests build through it, so a key means the
same thing everywhere.
"""
from __future__ import annotations

import itertools

import torch
from omegaconf import DictConfig, OmegaConf

from srcore.data import TrainPatches, iter_images, load_images
from srcore.degrade import build_degradation
from srcore.models import build_model
from srcore.regularizers import REGULARIZERS
from srcore.train import TrainSettings, resolve_device


def plain(node):
    """A config node as plain Python data (lists, dicts, scalars), interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def regularizer_specs(cfg: DictConfig) -> list[dict]:
    """The regularisers a job trains with, as the plain dicts ``srcore.models.build_model`` takes:
    each entry of ``regularizers`` (filled by the ``regularizer`` group; dropout's settings are
    the ``dropout.*`` keys), in the order selected."""
    return [{"name": name, **(settings or {})} for name, settings in plain(cfg.regularizers).items()]


def model_args(cfg: DictConfig) -> dict:
    """The network's build arguments: stored in ``model.pt`` so any weights file rebuilds itself."""
    backbone = {k: v for k, v in plain(cfg.backbone).items() if k != "dropout_p"}  # dropout_p: a config default
    return {**backbone, "upscale": cfg.scale, "regularizers": regularizer_specs(cfg)}


def model(cfg: DictConfig) -> torch.nn.Module:
    return build_model(**model_args(cfg))


def gt_crop_size(cfg: DictConfig) -> int:
    """Size of the HR crops fed to the degradation: its own ``gt_size`` (the paper's 400,
    paired-cropped afterwards) or exactly one training patch."""
    return cfg.degradation.get("gt_size") or cfg.train.patch_size * cfg.scale


def degradation_params(cfg: DictConfig) -> tuple[str, dict]:
    """(name, parameters) of the training degradation: its config (minus ``gt_size``, the
    sweeper's crop size), the scale, and the HR training patch it cuts its output to."""
    params = plain(cfg.degradation)
    params.pop("gt_size", None)
    return params.pop("name"), {**params, "scale": cfg.scale, "gt_patch": cfg.train.patch_size * cfg.scale}


def degradation(cfg: DictConfig):
    name, params = degradation_params(cfg)
    return build_degradation(name, **params)


# Training images decoded and prepared this many at a time (USM runs over their planes in threads).
PREPARE_CHUNK = 16


def train_patches(cfg: DictConfig, degrade, seed: int | None = None) -> TrainPatches:
    """The training crops: every image prepared once by the degradation (the realesrgan pipeline
    sharpens each whole image here), cut by a counter-based generator of ``seed``. Images are
    decoded, prepared and copied into the crops' store ``PREPARE_CHUNK`` at a time, so the host
    holds the training set once, plus one chunk in the making."""
    images = iter_images(cfg.data.train, "train")
    prepared = (item for chunk in iter(lambda: list(itertools.islice(images, PREPARE_CHUNK)), [])
                for item in degrade.prepare_images(chunk))
    return TrainPatches(prepared, gt_crop_size(cfg), cfg.seed if seed is None else seed, cfg.train.hflip)


def test_sets(cfg: DictConfig) -> dict[str, list]:
    return {name: load_images(spec, "test", cfg.eval.max_images) for name, spec in cfg.data.test_sets.items()}


BUDGETS = ("gt_images", "forward_passes")


def views(cfg: DictConfig) -> int:
    """Degraded LR views per GT patch the job's regularisers ask for (Simple Align: 2)."""
    return max((REGULARIZERS[s["name"]].views for s in regularizer_specs(cfg) if s["name"] in REGULARIZERS),
               default=1)


def gt_batch_size(cfg: DictConfig) -> int:
    """GT patches per iteration: ``train.batch_size``, divided by the views when the budget holds
    forward passes equal (``train.budget``)."""
    t = cfg.train
    return t.batch_size // views(cfg) if t.get("budget") == "forward_passes" else t.batch_size


def train_settings(cfg: DictConfig) -> TrainSettings:
    t = cfg.train
    return TrainSettings(
        iterations=t.iterations, batch_size=gt_batch_size(cfg), lr=t.lr, betas=tuple(t.betas),
        weight_decay=t.weight_decay, periods=tuple(t.scheduler.periods),
        restart_weights=tuple(t.scheduler.restart_weights), eta_min=t.scheduler.eta_min,
        ema_decay=t.ema_decay, seed=cfg.seed, log_every=t.log_every, val_every=t.val_every,
        ckpt_every=t.ckpt_every, num_workers=cfg.data.num_workers, device=str(resolve_device(t.device)),
        precision=t.precision, tf32=t.tf32, channels_last=t.channels_last, compile=t.compile,
        cuda_graph=t.cuda_graph, superbatch=t.superbatch, prefetch=t.prefetch)


def trial_reporter(cfg: DictConfig):
    """The Optuna trial this job reports validation PSNR to (for pruning), or None."""
    o = cfg.get("optuna")
    if not o or o.trial is None or o.pruner in (None, "none"):
        return None
    from sweeper.optuna_report import TrialReporter
    return TrialReporter(o.storage, o.study, o.trial, o.pruner, o.pruner_startup_trials, o.pruner_warmup_steps)
