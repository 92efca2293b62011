"""Pre-flight checks: a composed job config is validated before any work starts.

Every message names the offending key and value and what is allowed. Also checked before
anything is launched: that the output folder can be written, and under SLURM that one task's
request (CPUs, memory, GPUs) fits on some node of its partition (``sinfo``).
"""
from __future__ import annotations

import math
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from srcore.data import check_image_source, image_sizes
from srcore.degrade import validate_degradation
from srcore.evaluation import SUITES, TEST_DEGRADATIONS
from srcore.evaluation.seal import check_seal_root
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
    _validate_train(cfg)
    name, params = build.degradation_params(cfg)
    validate_degradation(name, params)
    gt_size = cfg.degradation.get("gt_size")
    if gt_size is not None and (not isinstance(gt_size, int) or gt_size < cfg.train.patch_size * cfg.scale):
        raise PreflightError(f"degradation.gt_size={gt_size!r} must be an integer >= the HR patch "
                             f"(train.patch_size * scale = {cfg.train.patch_size * cfg.scale})")
    _validate_data(cfg)
    _validate_suites(cfg)
    unknown = [d for d in cfg.eval.degradations if d not in TEST_DEGRADATIONS]
    if unknown:
        raise PreflightError(f"eval.degradations has unknown entries {unknown}; allowed: {', '.join(TEST_DEGRADATIONS)}")
    if cfg.logger.mode not in LOGGER_MODES:
        raise PreflightError(f"logger.mode={cfg.logger.mode!r} is unknown; allowed: {', '.join(LOGGER_MODES)}")
    from sweeper.progress import MODES as PROGRESS_MODES
    if cfg.logger.get("progress", "auto") not in PROGRESS_MODES:
        raise PreflightError(f"logger.progress={cfg.logger.progress!r} is unknown; allowed: {', '.join(PROGRESS_MODES)}")


def job_fingerprint(cfg: DictConfig) -> str:
    """What a job computes, with each regulariser's placement resolved to the sites it acts at:
    two jobs with the same fingerprint train the same model on the same data (e.g.
    dropout.position=b2 and middle on a 4-block network). Where and how a job runs is left out."""
    import json

    from srcore.models import BACKBONES
    from srcore.regularizers import check_regularizers

    args = check_model(**build.model_args(cfg))
    specs = args.pop("regularizers")
    sites = BACKBONES[args["name"]].site_names_for(args)
    regs = [{**r.spec(), "position": None, "sites": sorted(r.sites)} for r in check_regularizers(specs, sites)]
    rest = {k: build.plain(cfg[k]) for k in ("degradation", "data", "train", "eval", "seed", "scale") if k in cfg}
    for run_only in ("device", "threads"):
        rest.get("train", {}).pop(run_only, None)
    rest.get("data", {}).pop("num_workers", None)
    return json.dumps({"model": args, "regularizers": regs, **rest}, sort_keys=True, default=str)


def _validate_model(cfg: DictConfig) -> None:
    """The backbone states what it accepts (scales, sizes) and which sites it has; each
    regulariser checks its settings against those sites (``srcore.models.check_model``)."""
    check_model(**build.model_args(cfg))


def _number(name: str, value, low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = True) -> None:
    """A finite real number in the interval, else one line naming the key and the interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise PreflightError(f"{name}={value!r} must be a number in {interval}")


def _validate_train(cfg: DictConfig) -> None:
    t = cfg.train
    for key in ("iterations", "batch_size", "patch_size", "log_every", "val_every", "ckpt_every"):
        _positive_int(f"train.{key}", t[key])
    _number("train.lr", t.lr, 0, low_open=True)
    if len(t.betas) != 2:
        raise PreflightError(f"train.betas={list(t.betas)} must be two numbers in [0, 1)")
    for k, beta in enumerate(t.betas):
        _number(f"train.betas[{k}]", beta, 0, 1)
    _number("train.weight_decay", t.weight_decay, 0)
    _number("train.scheduler.eta_min", t.scheduler.eta_min, 0, t.lr, high_open=False)
    _number("train.ema_decay", t.ema_decay, 0, 1)
    _validate_schedule(t)
    _validate_budget(cfg)
    if t.get("threads") is not None:
        _positive_int("train.threads", t.threads)
    if not isinstance(cfg.data.num_workers, int) or cfg.data.num_workers < 0:
        raise PreflightError(f"data.num_workers={cfg.data.num_workers!r} must be an integer >= 0")
    device = str(t.device)
    _validate_device(device)
    _validate_speed(t)
    _validate_gpus(cfg)


def _validate_gpus(cfg: DictConfig) -> None:
    """``train.gpus``: N ranks split the global batch, one GPU each (docs/cluster.md, "One job on N GPUs")."""
    t = cfg.train
    n = t.get("gpus", 1)
    _positive_int("train.gpus", n)
    if n == 1:
        return
    batch = build.gt_batch_size(cfg)
    if batch % n:
        raise PreflightError(f"train.gpus={n} does not divide the global batch train.batch_size={batch} (each rank "
                             f"takes batch_size / gpus patches): use a batch_size that is a multiple of {n}")
    if t.compile:
        raise PreflightError(f"train.compile=true is not supported with train.gpus={n} (several ranks train "
                             "eagerly through DistributedDataParallel): set train.compile=false or train.gpus=1")
    device = str(t.device)
    if device.startswith("cuda:"):
        raise PreflightError(f"train.device={device!r} names one GPU but train.gpus={n} takes {n}, one per rank: use "
                             "train.device=cuda or auto (choose the GPUs with CUDA_VISIBLE_DEVICES)")
    import os

    import torch
    if int(os.environ.get("SLURM_NTASKS") or 1) > 1:
        return  # a task of a job on N SLURM tasks: the allocation holds its GPUs (a task may see only its own)
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        visible = torch.cuda.device_count()
        if n > visible:
            raise PreflightError(f"train.gpus={n} but this machine shows {visible} GPU(s) (train.device={device}); "
                                 f"allowed: 1..{visible}, or train.device=cpu for {n} CPU ranks")


def _validate_speed(t) -> None:
    """The training engine's speed options (srcore.train.TrainSettings, docs/speed.md)."""
    from srcore.train import PRECISIONS
    if t.precision not in PRECISIONS:
        raise PreflightError(f"train.precision={t.precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    for key in ("tf32", "channels_last", "compile", "cuda_graph"):
        if not isinstance(t[key], bool):
            raise PreflightError(f"train.{key}={t[key]!r} must be true or false")
    _positive_int("train.superbatch", t.superbatch)
    if isinstance(t.prefetch, bool) or not isinstance(t.prefetch, int) or t.prefetch < 0:
        raise PreflightError(f"train.prefetch={t.prefetch!r} must be an integer >= 0 (batches made ahead; 0: none)")


def _validate_budget(cfg: DictConfig) -> None:
    budget = cfg.train.get("budget", "gt_images")
    if budget not in build.BUDGETS:
        raise PreflightError(f"train.budget={budget!r} is unknown; allowed: {', '.join(build.BUDGETS)}")
    k = build.views(cfg)
    if budget == "forward_passes" and cfg.train.batch_size % k:
        raise PreflightError(f"train.batch_size={cfg.train.batch_size} is not a multiple of the {k} degraded views "
                             f"per GT patch its regularisers ask for (train.budget=forward_passes splits the batch)")


def _validate_schedule(t) -> None:
    periods, weights = list(t.scheduler.periods), list(t.scheduler.restart_weights)
    if len(periods) != len(weights):
        raise PreflightError(f"train.scheduler.periods={periods} and restart_weights={weights} must have the "
                             "same length")
    for k, period in enumerate(periods):
        _positive_int(f"train.scheduler.periods[{k}]", period)
    for k, weight in enumerate(weights):
        _number(f"train.scheduler.restart_weights[{k}]", weight, 0, low_open=True)
    if sum(periods) < t.iterations:
        raise PreflightError(f"train.scheduler.periods={periods} cover {sum(periods)} iterations but "
                             f"train.iterations={t.iterations}: the periods must cover the whole run")


def _validate_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise PreflightError(f"train.device={device!r} but no CUDA device is available; use 'auto' or 'cpu'")
    elif device not in ("auto", "cpu"):
        raise PreflightError(f"train.device={device!r} is unknown; allowed: auto, cpu, cuda, cuda:N")


def _validate_suites(cfg: DictConfig) -> None:
    suites = list(cfg.eval.get("suites", ["paper"]))
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        raise PreflightError(f"eval.suites={suites} must name one or more of: {', '.join(SUITES)}")
    if "seal" in suites:
        check_seal_root(cfg.eval.seal_root)  # one line naming the missing folder or file
    for key in ("batch_size", "tile"):  # evaluation speed (docs/evaluation-speed.md): null or a positive integer
        if cfg.eval.get(key) is not None:
            _positive_int(f"eval.{key}", cfg.eval[key])
    for key in ("workers", "tile_overlap"):
        value = cfg.eval.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise PreflightError(f"eval.{key}={value!r} must be a non-negative integer")
    if cfg.eval.get("lr_cache") is not None and not str(cfg.eval.lr_cache).strip():
        raise PreflightError("eval.lr_cache='' must be a folder, or null to rebuild the test LR images in every job")


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
    _validate_test_image_sizes(cfg)


def _validate_test_image_sizes(cfg: DictConfig) -> None:
    """Every test image must survive the protocol: cropped to a multiple of the scale, it keeps
    an 11-px SSIM window inside the crop border (headers only: no image is decoded)."""
    need = max(cfg.scale, 2 * cfg.eval.crop_border + 11)
    for name, spec in cfg.data.test_sets.items():
        for image, (h, w) in image_sizes(str(spec), cfg.eval.max_images):
            if min(h - h % cfg.scale, w - w % cfg.scale) < need:
                raise PreflightError(f"data.test_sets.{name}: image {image!r} is {w}x{h} px; the test protocol needs "
                                     f"at least {need}x{need} (scale {cfg.scale}, crop border "
                                     f"{cfg.eval.crop_border}, SSIM window 11): remove it or use another folder")


# --- Where the job runs: the output folder, the SLURM partition ------------------------------

def check_output_folder(folder) -> None:
    """Create ``folder`` (a sweep's or a run's) and a file in it, or say in one line which
    folder cannot be written and what to do: before any work, instead of a traceback later."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        why = f"{existing} is a file" if existing is not None and not existing.is_dir() else (e.strerror or str(e))
        raise PreflightError(f"cannot write the output folder {folder} ({why}); set paths.output_root (or "
                             "SR_OUTPUT_ROOT) to a folder you can write") from None


def _count(value) -> int:
    """A GPU count out of 2, "2", "a100:2" or a gres "gpu:a100:2(S:0-1)"; 0 for none."""
    if value in (None, "", "(null)"):
        return 0
    return int(re.sub(r"\(.*\)", "", str(value)).split(":")[-1] or 0)


def slurm_request(params: Mapping) -> dict:
    """What one array task asks of its node (SLURM launcher options): CPUs, memory (MB), GPUs."""
    tasks = int(params.get("tasks_per_node") or 1)
    gpus = _count(params.get("gpus_per_node")) or tasks * _count(params.get("gpus_per_task")) or sum(
        _count(g) for g in str(params.get("gres") or "").split(",") if g.startswith("gpu"))
    cpus = int(params.get("cpus_per_gpu") or 0) * gpus or tasks * int(params.get("cpus_per_task") or 1)
    mem_mb = int(float(params["mem_gb"]) * 1024) if params.get("mem_gb") else 0
    return {"partition": params.get("partition"), "cpus": cpus, "mem_mb": mem_mb, "gpus": gpus}


def slurm_nodes(partition: str | None) -> tuple[str, list[dict]]:
    """The partition (the default one if None) and its kinds of node, from ``sinfo``."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %c %m %G %T"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise PreflightError("launcher=slurm but there is no `sinfo` here: run the sweep on a SLURM login node "
                             "(`make slurm-up` starts a local cluster)") from None
    if proc.returncode != 0:
        raise PreflightError(f"launcher=slurm: `sinfo` failed ({' '.join(proc.stderr.split())[:200]}); is the "
                             "cluster up?")
    nodes: dict[str, list[dict]] = {}
    for fields in (line.split(None, 4) for line in proc.stdout.splitlines()):
        if len(fields) < 5:
            continue
        name, cpus, mem, gres, state = fields
        nodes.setdefault(name, []).append({"cpus": int(cpus.rstrip("+")), "mem_mb": int(mem.rstrip("+")),
                                           "gpus": sum(_count(g) for g in gres.split(",") if g.startswith("gpu")),
                                           "state": state})
    default = next((p for p in nodes if p.endswith("*")), None)
    name = partition if partition is not None else (default or "").rstrip("*")
    found = nodes.get(name, []) + nodes.get(f"{name}*", [])
    if not found:
        raise PreflightError(f"hydra.launcher.partition={partition!r}: no such partition; sinfo lists "
                             f"{', '.join(p.rstrip('*') for p in nodes) or 'none'}")
    return name, found


def fits(request: dict, node: dict) -> bool:
    return all(node[k] >= request[k] for k in ("cpus", "mem_mb", "gpus"))


def unmet_request(request: dict) -> tuple[str, str] | None:
    """(what is wrong, what to lower) when no node of the request's partition can hold one task
    (``slurm_request``), else None."""
    partition, nodes = slurm_nodes(request["partition"])
    if any(fits(request, n) for n in nodes):
        return None
    biggest = {k: max(n[k] for n in nodes) for k in ("cpus", "mem_mb", "gpus")}
    lower = {"cpus": f"cpus_per_task={biggest['cpus']}", "mem_mb": f"mem_gb={biggest['mem_mb'] // 1024}",
             "gpus": f"gpus_per_node={biggest['gpus']} (or another hydra.launcher.partition)"}
    advice = " ".join(f"hydra.launcher.{lower[k]}" for k in lower if request[k] > biggest[k])
    return (f"each task asks for {request['cpus']} CPUs, {request['mem_mb']} MB, {request['gpus']} GPUs but no node "
            f"of partition {partition!r} has that much (the largest: {biggest['cpus']} CPUs, {biggest['mem_mb']} MB, "
            f"{biggest['gpus']} GPUs)", advice or "to what one node has (no single node has all of it)")


def check_slurm_request(params: Mapping) -> None:
    """A task must fit on some node of its partition, or SLURM keeps it pending for ever."""
    unmet = unmet_request(slurm_request(params))
    if unmet:
        raise PreflightError(f"launcher=slurm: {unmet[0]}, so it would wait for ever; lower it, e.g. {unmet[1]}")
