"""One job's life: validate, train (resuming if a checkpoint exists), evaluate, write
results atomically, log to wandb. A job whose results exist is skipped."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from srcore.data import TrainPatches, load_images
from srcore.degradations import build_degradation
from srcore.evaluate import evaluate
from srcore.models import build_model
from srcore.models.checkpoint import save_weights
from srcore.train import Interrupted, TrainSettings, resolve_device, train
from sweeper.jobstate import RESULTS, JobStatus, where, write_json
from sweeper.naming import run_id
from sweeper.optuna_report import Pruned
from sweeper.preemption import StopRequest
from sweeper.preflight import validate_config

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.pt"


def model_from_config(cfg: DictConfig) -> torch.nn.Module:
    b = OmegaConf.to_container(cfg.backbone, resolve=True)
    kwargs = {k: v for k, v in b.items() if k not in ("name", "dropout_p")}
    position = cfg.dropout.position
    position = list(position) if OmegaConf.is_list(position) else position
    return build_model(b["name"], upscale=cfg.scale, dropout_position=position,
                       dropout_p=float(cfg.dropout.p), dropout_kind=cfg.dropout.kind, **kwargs)


def gt_crop_size(cfg: DictConfig) -> int:
    """Size of the HR crops fed to the degradation: its own ``gt_size`` (the paper's 400,
    paired-cropped afterwards) or exactly one training patch."""
    return cfg.degradation.get("gt_size") or cfg.train.patch_size * cfg.scale


def degradation_from_config(cfg: DictConfig):
    params = OmegaConf.to_container(cfg.degradation, resolve=True)
    params.pop("gt_size", None)
    return build_degradation(params.pop("name"), cfg.scale, gt_patch=cfg.train.patch_size * cfg.scale, **params)


def prepare_images(degrade, images):
    """Work a degradation does once per training image instead of once per batch (the
    realesrgan pipeline sharpens each whole image here)."""
    return degrade.prepare_images(images) if hasattr(degrade, "prepare_images") else images


def train_settings(cfg: DictConfig) -> TrainSettings:
    t = cfg.train
    return TrainSettings(
        iterations=t.iterations, batch_size=t.batch_size, lr=t.lr, betas=tuple(t.betas),
        weight_decay=t.weight_decay, periods=tuple(t.scheduler.periods),
        restart_weights=tuple(t.scheduler.restart_weights), eta_min=t.scheduler.eta_min,
        ema_decay=t.ema_decay, seed=cfg.seed, log_every=t.log_every, val_every=t.val_every,
        ckpt_every=t.ckpt_every, num_workers=cfg.data.num_workers, device=str(resolve_device(t.device)))


def interpret_after_training(cfg: DictConfig, net, test_sets: dict, job_dir: Path, job_name: str) -> dict:
    """The optional post-training hook: interpretation.json, and its scalars for wandb."""
    from srcore.interpretation import interpret_model

    images = next(iter(test_sets.values()))[: cfg.interpret.max_images]
    result, _, _ = interpret_model(net.cpu(), images, cfg.interpret.layer, cfg.interpret.embed, title=job_name)
    write_json(job_dir / "interpret" / "interpretation.json", result)
    ev = result["evenness"][result["layer"]]
    prefix = f"interpret/{result['layer']}"
    return {f"{prefix}/gini": ev["gini"], f"{prefix}/entropy": ev["entropy"], f"{prefix}/cv": ev["cv"],
            f"{prefix}/chi": result["chi"], f"{prefix}/chi_2d": result["chi_2d"]}


def start_wandb_service(cfg: DictConfig) -> threading.Thread | None:
    """Start wandb's service process while the job loads its data and builds its model:
    ~0.5-1 s of every job process's start-up otherwise, spent waiting for that process.
    ``start_wandb`` joins the thread before ``wandb.init``, so the two never overlap."""
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # offline must not even look up DNS
    os.environ.setdefault("WANDB_SILENT", "true")
    own_wandb_service()
    if cfg.logger.mode == "disabled":
        return None

    def setup() -> None:
        try:
            import wandb
            wandb.setup()
        except Exception as e:  # noqa: BLE001 - wandb.init, which follows, reports any real problem
            log.debug("starting wandb's service early failed: %s", e)

    thread = threading.Thread(target=setup, name="wandb-service-start", daemon=True)
    thread.start()
    return thread


def start_wandb(cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str],
                service_start: threading.Thread | None):
    """The job's wandb run; ``service_start`` is ``start_wandb_service``'s thread."""
    if service_start is not None:
        service_start.join()
    import wandb
    return wandb.init(
        project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode,
        group=cfg.sweep_name or "runs", job_type="train", name=job_name,
        tags=[t[:64] for t in tags], id=run_id(cfg.sweep_name, job_name), resume="allow",
        # "swept": the job's own overrides, so the dashboard's run table can group by them
        dir=str(job_dir), config={**OmegaConf.to_container(cfg, resolve=True),
                                  "swept": dict(t.split("=", 1) for t in tags if "=" in t)},
        settings=wandb.Settings(console="off", x_disable_stats=True),
    )


def own_wandb_service() -> None:
    """Make this job start its own wandb service. wandb exports its service's address
    (WANDB_SERVICE) to child processes, so a job launched by any process that used wandb
    (a notebook, a test session, analysis.interpret) would log through that parent's
    service; a killed job's run then stays registered there, and the rerun is refused
    with "run ID ... is in use". The token names the pid that started the service."""
    token = os.environ.get("WANDB_SERVICE")
    if token and token.split("-")[1:2] != [str(os.getpid())]:
        os.environ.pop("WANDB_SERVICE")


def run_job(cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str]) -> dict:
    """Run one job to its results, recording in ``status.json`` how it went.

    A preemption/timeout signal saves the state and hands over to the requeue (see
    ``sweeper.preemption``); any other failure is written down with its reason and
    re-raised, so the sweep goes on with the other jobs and reports this one."""
    job_dir = Path(job_dir)
    results_path = job_dir / RESULTS
    if results_path.exists():
        log.info("%s: finished earlier, skipping (delete %s to rerun)", job_name, results_path)
        return json.loads(results_path.read_text())["metrics"]
    validate_config(cfg)
    job_dir.mkdir(parents=True, exist_ok=True)
    status = JobStatus(job_dir, job_name, cfg.train.iterations)
    with StopRequest() as stop:
        try:
            return _train_and_evaluate(cfg, job_dir, job_name, tags, status, stop)
        except Interrupted as e:
            status.write(state="interrupted", iteration=e.iteration,
                         reason=f"{signal.Signals(stop.signum).name} at iteration {e.iteration}; state saved")
            log.warning("%s: %s", job_name, e)
            stop.hand_over()
            raise
        except Exception as e:
            status.write(state="failed", reason=f"{type(e).__name__}: {e}"[:500],
                         traceback=traceback.format_exc()[-4000:])
            raise


def _train_and_evaluate(cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str], status: JobStatus,
                        stop: StopRequest) -> dict:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    settings = train_settings(cfg)
    service_start = start_wandb_service(cfg)

    train_images = load_images(cfg.data.train, "train")
    test_sets = {name: load_images(spec, "test", cfg.eval.max_images) for name, spec in cfg.data.test_sets.items()}
    degrade = degradation_from_config(cfg)
    patches = TrainPatches(prepare_images(degrade, train_images), gt_crop_size(cfg), cfg.seed, cfg.train.hflip)
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
    model = model_from_config(cfg)

    val_images = {cfg.data.val_set: test_sets[cfg.data.val_set][: cfg.data.val_max_images]} if cfg.data.val_set else {}
    val_key = f"val/{cfg.data.val_set}/clean/psnr"

    def validate(net):
        _, means = evaluate(net, val_images, ["clean"], cfg.scale, cfg.eval.crop_border, cfg.eval.noise_seed,
                            settings.device)
        return {f"val/{k}": v for k, v in means.items()}

    run = start_wandb(cfg, job_dir, job_name, tags, service_start)

    wandb_lost = []
    reporter = None
    if cfg.get("optuna") and cfg.optuna.trial is not None and cfg.optuna.pruner not in (None, "none"):
        from sweeper.optuna_report import TrialReporter
        reporter = TrialReporter(cfg.optuna.storage, cfg.optuna.study, cfg.optuna.trial, cfg.optuna.pruner,
                                 cfg.optuna.pruner_startup_trials, cfg.optuna.pruner_warmup_steps)

    def log_metrics(metrics: dict, step: int) -> None:
        # A signal sent to the whole job step (scancel, preemption) also ends wandb's service
        # process: training must still reach its next iteration and save its state.
        if not wandb_lost:
            try:
                run.log(metrics, step=step)
            except Exception as e:  # noqa: BLE001
                wandb_lost.append(e)
                log.warning("%s: wandb stopped logging (%s); training goes on", job_name, e)
        if val_key in metrics:
            status.write(iteration=step, val_psnr=metrics[val_key])
            if reporter is not None:
                reporter.report(metrics[val_key], step)  # raises Pruned when the study says stop

    exit_code = 1
    try:
        t0 = time.perf_counter()
        try:
            final = train(model, patches, degrade, settings, job_dir / CHECKPOINT, log_metrics=log_metrics,
                          validate=validate if val_images else None, on_iteration=status.heartbeat,
                          should_stop=lambda: stop.requested)
        except Pruned as e:  # a clean end, not a failure: the study has seen the reports
            status.write(state="pruned", iteration=e.step, reason=str(e))
            log.info("%s: %s", job_name, e)
            exit_code = 0
            return {"pruned_at": e.step}
        train_seconds = time.perf_counter() - t0
        save_weights(model, job_dir / WEIGHTS, ema_model=final if final is not model else None)

        status.write(iteration=cfg.train.iterations, phase="evaluating")
        t0 = time.perf_counter()
        net = final if cfg.eval.use_ema else model
        rows, means = evaluate(net, test_sets, list(cfg.eval.degradations), cfg.scale, cfg.eval.crop_border,
                               cfg.eval.noise_seed, settings.device,
                               save_dir=job_dir / "images" if cfg.eval.save_images else None)
        eval_seconds = time.perf_counter() - t0

        metrics = {f"test/{k}": v for k, v in means.items()}
        run.summary.update({**metrics, "train_seconds": train_seconds, "eval_seconds": eval_seconds})
        import wandb
        columns = list(rows[0])
        # the final metrics as tables in the run's page: per (set, degradation), and per image
        per_set = {}
        for key, value in means.items():
            test_set, deg, name = key.split("/")
            per_set.setdefault((test_set, deg), {})[name] = value
        names = sorted({n for v in per_set.values() for n in v})
        run.log({"test/metrics": wandb.Table(columns=["set", "degradation", *names],
                                             data=[[s, d, *(v.get(n) for n in names)] for (s, d), v in per_set.items()]),
                 "test/per_image": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})
        results = {"job": job_name, "sweep": cfg.sweep_name, "run_id": run.id, "tags": tags,
                   "config": OmegaConf.to_container(cfg, resolve=True), "metrics": metrics,
                   "per_image": rows, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                   "attempt": status.data["attempt"], "ran_on": where()}
        if cfg.get("interpret") and cfg.interpret.after_training:
            run.summary.update(interpret_after_training(cfg, net, test_sets, job_dir, job_name))
        write_json(job_dir / RESULTS, results)
        status.write(state="done", phase=None)
        exit_code = 0
        log.info("%s: done (train %.1fs, eval %.1fs)", job_name, train_seconds, eval_seconds)
        return metrics
    finally:
        try:
            run.finish(exit_code=exit_code)
        except Exception as e:  # a signal to the whole job step (scancel) may have ended wandb's service
            log.warning("%s: wandb could not finish the run: %s", job_name, e)
