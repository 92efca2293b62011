"""Pre-flight checks: a composed job config is validated before any work starts.

Every message names the offending key and value and what is allowed.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from srcore.data import check_image_source
from srcore.degrade import validate_degradation
from srcore.evaluation import TEST_DEGRADATIONS
from srcore.models import check_model
from sweeper import build

LOGGER_MODES = ("offline", "online", "disabled")


class PreflightError(ValueError):
    pass


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PreflightError(f"{name}={value!r} must be a positive integer")


def validate_config(cfg: DictConfig) -> None:
    """Raise PreflightError for the first invalid setting of a job config."""
    try:
        _validate(cfg)
    except PreflightError:
        raise
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise PreflightError(str(e)) from None


def _validate(cfg: DictConfig) -> None:
    _validate_model(cfg)
    name, params = build.degradation_params(cfg)
    validate_degradation(name, params)
    gt_size = cfg.degradation.get("gt_size")
    if gt_size is not None and (not isinstance(gt_size, int) or gt_size < cfg.train.patch_size * cfg.scale):
        raise PreflightError(f"degradation.gt_size={gt_size!r} must be an integer >= the HR patch "
                             f"(train.patch_size * scale = {cfg.train.patch_size * cfg.scale})")
    _validate_train(cfg)
    _validate_data(cfg)
    unknown = [d for d in cfg.eval.degradations if d not in TEST_DEGRADATIONS]
    if unknown:
        raise PreflightError(f"eval.degradations has unknown entries {unknown}; allowed: {', '.join(TEST_DEGRADATIONS)}")
    if cfg.logger.mode not in LOGGER_MODES:
        raise PreflightError(f"logger.mode={cfg.logger.mode!r} is unknown; allowed: {', '.join(LOGGER_MODES)}")


def _validate_model(cfg: DictConfig) -> None:
    """The backbone states what it accepts (scales, sizes) and which sites it has; each
    regulariser checks its settings against those sites (``srcore.models.check_model``)."""
    check_model(**build.model_args(cfg))


def _validate_train(cfg: DictConfig) -> None:
    t = cfg.train
    for key in ("iterations", "batch_size", "patch_size", "log_every", "val_every", "ckpt_every"):
        _positive_int(f"train.{key}", t[key])
    if len(t.scheduler.periods) != len(t.scheduler.restart_weights):
        raise PreflightError(f"train.scheduler.periods={list(t.scheduler.periods)} and restart_weights="
                             f"{list(t.scheduler.restart_weights)} must have the same length")
    if not 0 <= t.ema_decay < 1:
        raise PreflightError(f"train.ema_decay={t.ema_decay} must be in [0, 1)")
    device = str(t.device)
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise PreflightError(f"train.device={device!r} but no CUDA device is available; use 'auto' or 'cpu'")
    elif device not in ("auto", "cpu"):
        raise PreflightError(f"train.device={device!r} is unknown; allowed: auto, cpu, cuda, cuda:N")


def _validate_data(cfg: DictConfig) -> None:
    data = cfg.data
    for key, spec in [("data.train", data.train)] + [(f"data.test_sets.{k}", v) for k, v in data.test_sets.items()]:
        try:
            check_image_source(str(spec))
        except (FileNotFoundError, ValueError) as e:
            raise PreflightError(f"{key}: {e}") from None
    if not data.test_sets:
        raise PreflightError("data.test_sets is empty; name at least one test set (name: folder or 'builtin')")
    if data.val_set is not None and data.val_set not in data.test_sets:
        raise PreflightError(f"data.val_set={data.val_set!r} is not one of data.test_sets: {list(data.test_sets)}")


