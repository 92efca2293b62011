"""One job's life: validate, train (resuming if a checkpoint exists), evaluate, write
results atomically, log to wandb. A job whose results exist is skipped.

Objects come from ``sweeper.build``, the wandb run from ``sweeper.wandb_run``; this module
only orders the steps and records in ``status.json`` how they went.
"""
from __future__ import annotations

import json
import logging
import signal
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from srcore.evaluation import evaluate
from srcore.evaluation.scoring import EvaluationStopped
from srcore.evaluation.seal import case_means, evaluate_seal
from srcore.models.checkpoint import save_weights
from srcore.train import Interrupted, train
from sweeper import build
from sweeper.jobstate import (
    RESULTS,
    STATUS,
    JobStatus,
    read_json,
    read_results,
    wandb_run_missing,
    where,
    write_json,
)
from sweeper.job_folder import CHECKPOINT, EVAL_PARTIAL, WEIGHTS, FolderVanished, JobFolder, start_over
from sweeper.optuna_report import Pruned
from sweeper.preemption import StopRequest
from sweeper.preflight import validate_config
from sweeper.progress import JobProgress
from sweeper.ranks import job_ranks
from sweeper.wandb_run import JobRun, ValidationImages, degradation_panels, start_service

log = logging.getLogger(__name__)



def run_job(cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str]) -> dict:
    """Run one job to its results, recording in ``status.json`` how it went.

    A preemption/timeout signal or Ctrl-C saves the state and hands over to the requeue or
    exits (see ``sweeper.preemption``); any other failure is written down with its reason and
    re-raised, so the sweep goes on with the other jobs and reports this one. A job whose folder
    is deleted while it runs fails (``JobFolder``); a finished job whose wandb run is gone runs
    again from the start."""
    job_dir = Path(job_dir)
    done = finished_earlier(cfg, job_dir, job_name, tags)
    if done is not None:
        return done["metrics"]
    status = open_job(cfg, job_dir, job_name, tags)
    with StopRequest() as stop, JobFolder(job_dir) as folder:
        try:
            metrics = _train_and_evaluate(cfg, job_dir, job_name, tags, status, stop, folder)
        except BaseException as e:
            record_outcome(e, job_name, status, stop)
            if isinstance(e, (Interrupted, EvaluationStopped)):
                stop.hand_over()
            raise
    if stop.signum == signal.SIGINT:  # Ctrl-C after the last point the job asks (writing its results): it is done
        log.warning("%s: finished before it could stop; stopping here on Ctrl-C", job_name)
        raise SystemExit(128 + signal.SIGINT)
    return metrics


def finished_earlier(cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str]) -> dict | None:
    """The results of a job that finished earlier (its wandb run completed if it was not), or
    None; a finished job whose wandb run is gone is started over."""
    done = read_results(job_dir)
    if done is not None and cfg.logger.mode != "disabled" and wandb_run_missing(job_dir, done):
        log.warning("%s: finished earlier, but its wandb run %s is gone from %s: running the job again from the "
                    "start (its results, weights and checkpoints are replaced)", job_name, done["run_id"],
                    job_dir / "wandb")
        start_over(job_dir)
        done = None
    if done is not None:
        if not (read_json(job_dir / STATUS) or {}).get("wandb_finished") and cfg.logger.mode != "disabled":
            repair_wandb_run(cfg, job_dir, job_name, tags, done)
        log.info("%s: finished earlier, skipping (delete %s to rerun)", job_name, job_dir / RESULTS)
    return done


def open_job(cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str]) -> JobStatus:
    """Validate the job, make its folder (without an earlier attempt's partial writes); its status."""
    validate_config(cfg)
    job_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(job_dir)
    return JobStatus(job_dir, job_name, cfg.train.iterations, overrides=tags)


def record_outcome(e: BaseException, job_name: str, status: JobStatus, stop: StopRequest) -> None:
    """Write down in ``status.json`` why a job ended without results."""
    if isinstance(e, (Interrupted, EvaluationStopped)):
        where_ = (f"at iteration {e.iteration}; state saved" if isinstance(e, Interrupted) else
                  f"during evaluation ({e.suite} suite) after {len(e.rows)} images; those are kept")
        status.write(state="interrupted", reason=f"{signal.Signals(stop.signum).name} {where_}")
        log.warning("%s: %s", job_name, e)
    elif isinstance(e, KeyboardInterrupt):  # Ctrl-C twice: stopped at once, nothing saved now
        status.write(state="interrupted", reason=f"SIGINT twice at iteration {status.data['iteration']}: stopped "
                     "at once; the rerun resumes from the last checkpoint")
        log.warning("%s: stopped at once (Ctrl-C twice); the rerun resumes from the last checkpoint", job_name)
    elif isinstance(e, FolderVanished):
        e.remove_strays()  # what this attempt wrote after the deletion: the rerun starts over
        status.write(state="failed", reason=str(e)[:500])
    elif isinstance(e, Exception):
        status.write(state="failed", reason=f"{type(e).__name__}: {e}"[:500],
                     traceback="".join(traceback.format_exception(e))[-4000:])


def remove_partial_writes(job_dir: Path) -> None:
    """Temporary files of atomic writes that a killed attempt left behind (``srcore.atomic``:
    ``.<name>.<random>.tmp``, up to a checkpoint's size each). The job is the only writer of its
    folder, so at its start any such file is garbage."""
    stale = [p for p in (*job_dir.glob(".*.tmp"), *job_dir.glob("*/.*.tmp")) if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d partial write(s) of an earlier attempt: %s", len(stale), ", ".join(p.name for p in stale))


def _train_and_evaluate(cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str], status: JobStatus,
                        stop: StopRequest, folder: JobFolder) -> dict:
    session = JobSession(cfg, job_dir, job_name, tags, status, stop, folder)
    try:
        session.progress.begin("train")
        t0 = time.perf_counter()
        try:
            with job_ranks(cfg, job_dir) as ranks:  # train.gpus > 1: this process is rank 0 (sweeper.ranks)
                final = train(session.model, session.patches, session.degrade, session.settings, job_dir / CHECKPOINT,
                              should_stop=(lambda: stop.requested) if ranks is None else (lambda: stop.signum or 0),
                              ranks=ranks, **session.callbacks())
        except Pruned as e:  # a clean end, not a failure: the study has seen the reports
            return session.pruned(e)
        except Interrupted as e:
            if stop.signum is None and e.request:  # another rank got the signal: this one acts on it
                stop.signum = e.request
            raise
        return session.finish(final, time.perf_counter() - t0)
    finally:
        session.close()


class JobSession:
    """A job around its training: what it trains and tests (``built``: made by the caller, e.g. a
    fused group sharing its data; else made here), its wandb run, progress and training
    callbacks; ``finish`` saves the weights, evaluates and writes the results."""

    def __init__(self, cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str], status: JobStatus,
                 stop: StopRequest, folder: JobFolder, built=None, concurrent_run: bool = False):
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.cfg, self.job_dir, self.job_name, self.tags = cfg, job_dir, job_name, tags
        self.status, self.stop, self.folder = status, stop, folder
        service_start = start_service(cfg)
        self.settings, self.test_sets, self.degrade, self.patches, self.model = built or _build_job(cfg)
        self.run = JobRun(cfg, job_dir, job_name, tags, service_start, concurrent=concurrent_run)
        folder.watch_run(self.run)
        _record_trial(cfg, job_dir, self.run)
        self.progress = JobProgress(cfg.logger.get("progress", "auto"), cfg.logger.get("progress_every_s", 30),
                                    cfg.train.iterations, val_key=f"val/{cfg.data.val_set}/clean/psnr")
        self.exit_code = 1
        self.progress.start()
        self.validate, self.val_images = _validation_images(cfg, _validator(cfg, self.test_sets), self.test_sets)

    def callbacks(self) -> dict:
        """``srcore.train.train``'s ``log_metrics``, ``validate`` and ``on_iteration`` for this job."""
        return {"log_metrics": _metrics_logger(self.cfg, self.run, self.status, self.progress, self.val_images),
                "validate": self.validate,
                "on_iteration": _each(self.folder.on_iteration, self.status.heartbeat, self.progress.on_iteration)}

    def pruned(self, e: Pruned) -> dict:
        self.status.write(state="pruned", iteration=e.step, reason=str(e))
        log.info("%s: %s", self.job_name, e)
        self.exit_code = 0
        return {"pruned_at": e.step}

    def finish(self, final: torch.nn.Module, train_seconds: float) -> dict:
        """After training: the weights, the evaluation, ``results.json``; the job's metrics."""
        cfg, job_dir, job_name, model, run = self.cfg, self.job_dir, self.job_name, self.model, self.run
        self.folder.check("after training")
        save_weights(model, job_dir / WEIGHTS, ema_model=final if final is not model else None)

        self.status.write(iteration=cfg.train.iterations, phase="evaluating")
        t0 = time.perf_counter()
        net = final if cfg.eval.use_ema else model
        self.progress.begin("eval")
        rows, means, seal = _evaluate(cfg, net, self.test_sets, job_dir, self.settings.device, self.stop,
                                      self.progress)
        eval_seconds = time.perf_counter() - t0
        self.progress.close()

        metrics = {**{f"test/{k}": v for k, v in means.items()},
                   **{f"seal/{k}": v for k, v in (seal or {}).get("summary", {}).items()}}
        run.log_results(rows, means, {**metrics, "train_seconds": train_seconds, "eval_seconds": eval_seconds}, seal,
                        panels=_panels(cfg, net, self.test_sets) if rows else None)
        results = {"job": job_name, "sweep": cfg.sweep_name, "run_id": run.id, "tags": self.tags,
                   "config": OmegaConf.to_container(cfg, resolve=True), "metrics": metrics,
                   "per_image": rows, **({"seal": seal} if seal else {}), "train_seconds": train_seconds,
                   "eval_seconds": eval_seconds, "attempt": self.status.data["attempt"], "ran_on": where()}
        if cfg.get("interpret") and cfg.interpret.after_training:
            run.summarize(interpret_after_training(cfg, net, self.test_sets, job_dir, job_name))
        self.folder.check("before writing results.json")
        write_json(job_dir / RESULTS, results)
        (job_dir / EVAL_PARTIAL).unlink(missing_ok=True)
        self.status.write(state="done", phase=None)
        self.exit_code = 0
        log.info("%s: done (train %.1fs, eval %.1fs)", job_name, train_seconds, eval_seconds)
        self.progress.finished(job_name, metrics, list(self.test_sets), job_dir / RESULTS)
        return metrics

    def close(self) -> None:
        self.progress.close()
        if self.run.finish(self.exit_code) and self.exit_code == 0:
            self.status.write(wandb_finished=True)  # without it, a rerun completes the wandb run


def _build_job(cfg: DictConfig, shared: dict | None = None):
    """What the job trains and tests: (train settings, test sets, degradation, training patches,
    model). The model comes last, its initial weights drawn from the job's seed. ``shared``: a
    cache the jobs of a fused group build through, so that jobs with the same data hold one copy
    of its images (each cut by its own seed)."""
    settings = build.train_settings(cfg)
    test_sets = _shared(shared, ("test", build.plain(cfg.data.test_sets), cfg.eval.max_images),
                        lambda: build.test_sets(cfg))
    degrade = build.degradation(cfg)
    patches = _shared(shared, ("train", cfg.data.train, build.plain(cfg.degradation), build.gt_crop_size(cfg),
                               cfg.train.hflip), lambda: build.train_patches(cfg, degrade))
    patches = patches.with_seed(cfg.seed) if shared is not None else patches
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
    return settings, test_sets, degrade, patches, build.model(cfg)


def _shared(cache: dict | None, key: tuple, make):
    if cache is None:
        return make()
    key = json.dumps(key, sort_keys=True, default=str)
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _evaluate(cfg: DictConfig, net, test_sets: dict, job_dir: Path, device, stop: StopRequest,
              progress: JobProgress):
    """The test suites of ``eval.suites``: (the paper's per-image rows, their per set x
    degradation means, SEAL's summary and per-case means or None). On a stop request either
    suite stops between two images; what both have scored is kept in ``eval_partial.json``
    and a rerun scores only the rest."""
    suites = list(cfg.eval.get("suites", ["paper"]))
    partial = job_dir / EVAL_PARTIAL
    kept = read_json(partial) or {}
    rows, means, seal_rows = [], {}, kept.get("seal_rows", [])
    try:
        if "paper" in suites:
            rows, means = _evaluate_paper(cfg, net, test_sets, job_dir, device, kept.get("rows", []), stop,
                                          progress.on_eval)
    except EvaluationStopped as e:
        write_json(partial, {"rows": e.rows, "seal_rows": seal_rows})
        raise
    try:
        seal = _evaluate_seal(cfg, net, device, seal_rows, stop, progress.on_seal) if "seal" in suites else None
    except EvaluationStopped as e:
        write_json(partial, {"rows": rows, "seal_rows": e.rows})
        raise
    return rows, means, seal


def _evaluate_seal(cfg: DictConfig, net, device, done: list[dict], stop: StopRequest, on_progress) -> dict:
    """SEAL's 100 cases: the summary (PSNR-S, AR, RPR per metric) and the per-case means."""
    cases = cfg.eval.get("seal_cases")
    rows, summary = evaluate_seal(net, cfg.eval.seal_root, device, cfg.eval.seal_batch_size, cfg.eval.seal_workers,
                                  cases=list(cases) if cases is not None else None, done=done,
                                  should_stop=lambda: stop.requested, on_progress=on_progress)
    cases, per_case = case_means(rows)
    return {"summary": summary,
            "cases": [{"case": c, **{m: float(v[k]) for m, v in per_case.items()}} for k, c in enumerate(cases)]}


def _evaluate_paper(cfg: DictConfig, net, test_sets: dict, job_dir: Path, device, done: list[dict],
                    stop: StopRequest, on_progress=None):
    """The paper's protocol, stopping between two images on a stop request (``EvaluationStopped``
    carries the rows scored so far; ``done`` are an earlier attempt's)."""
    return evaluate(net, test_sets, list(cfg.eval.degradations), cfg.scale, cfg.eval.crop_border,
                    cfg.eval.noise_seed, device, save_dir=job_dir / "images" if cfg.eval.save_images else None,
                    done=done, should_stop=lambda: stop.requested, on_progress=on_progress, **_eval_options(cfg))


def _eval_options(cfg: DictConfig) -> dict:
    """The evaluation's speed settings (``eval.*``; none of them changes a metric but ``tile``)."""
    return {"lr_cache": cfg.eval.get("lr_cache"), "batch_size": cfg.eval.get("batch_size"),
            "workers": cfg.eval.get("workers", 1), "tile": cfg.eval.get("tile"),
            "tile_overlap": cfg.eval.get("tile_overlap", 16)}


def repair_wandb_run(cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str], results: dict) -> None:
    """A job killed after writing its results but before its wandb run finished: log the results
    (the job's own truth) to the same run again and finish it, so the dashboard and the tables
    see a finished run."""
    log.info("%s: finished earlier, but its wandb run did not; completing it from %s", job_name, RESULTS)
    run = JobRun(cfg, job_dir, job_name, tags, start_service(cfg))
    means = {k.removeprefix("test/"): v for k, v in results["metrics"].items()}
    summary = {**results["metrics"], **{k: results[k] for k in ("train_seconds", "eval_seconds") if k in results}}
    run.log_results(results["per_image"], means, summary, results.get("seal"))
    if run.finish(0):  # the killed attempt's status.json still says running
        write_json(job_dir / STATUS, {**(read_json(job_dir / STATUS) or {}), "state": "done", "phase": None,
                                      "wandb_finished": True})


def _validator(cfg: DictConfig, test_sets: dict):
    """Validation PSNR (clean) on the first images of ``data.val_set`` during training, or None."""
    if not cfg.data.val_set:
        return None
    images = {cfg.data.val_set: test_sets[cfg.data.val_set][: cfg.data.val_max_images]}
    device = build.train_settings(cfg).device

    def validate(net) -> dict:
        _, means = evaluate(net, images, ["clean"], cfg.scale, cfg.eval.crop_border, cfg.eval.noise_seed, device,
                            **_eval_options(cfg))
        return {f"val/{k}": v for k, v in means.items()}
    return validate


def _metrics_logger(cfg: DictConfig, run: JobRun, status: JobStatus, progress: JobProgress | None = None,
                    val_images: ValidationImages | None = None):
    """Training metrics -> wandb (with the validation image panel, if any) and the progress bar;
    validation PSNR also -> status.json and the Optuna trial (which may raise ``Pruned``)."""
    val_key = f"val/{cfg.data.val_set}/clean/psnr"
    reporter = build.trial_reporter(cfg)

    def log_metrics(metrics: dict, step: int) -> None:
        images = val_images.pop() if val_images is not None and val_key in metrics else {}
        run.log({**metrics, **images}, step=step)
        if progress is not None:
            progress.log_metrics(metrics, step)
        if val_key in metrics:
            status.write(iteration=step, val_psnr=metrics[val_key])
            if reporter is not None:
                reporter.report(metrics[val_key], step)  # raises Pruned when the study says stop
    return log_metrics


def _each(*callbacks):
    """One callback calling each of ``callbacks`` with the same arguments."""
    def call(*args) -> None:
        for callback in callbacks:
            callback(*args)
    return call


def _images_cfg(cfg: DictConfig) -> dict:
    """``logger.images`` with its defaults (a config from before it existed has none)."""
    return {"panels": True, "val": True, "n": 2, "crop": 96,
            **OmegaConf.to_container(cfg.logger.get("images") or OmegaConf.create({}), resolve=True)}


def _validation_images(cfg: DictConfig, validate, test_sets: dict):
    """(the validator, wrapped to render the first validation image when ``logger.images.val``;
    the wrapper or None)."""
    images = _images_cfg(cfg)
    if validate is None or not images["val"] or cfg.logger.mode == "disabled":
        return validate, None
    wrapped = ValidationImages(validate, test_sets[cfg.data.val_set], cfg.data.val_set, cfg.scale, images["crop"],
                               cfg.eval.noise_seed)
    return wrapped, wrapped


def _panels(cfg: DictConfig, net, test_sets: dict) -> dict | None:
    """LR | SR | HR crops per test degradation of the first test set's first images (wandb)."""
    images = _images_cfg(cfg)
    if not images["panels"] or cfg.logger.mode == "disabled" or not test_sets:
        return None
    set_name, set_images = next(iter(test_sets.items()))
    try:
        return degradation_panels(net, set_images[: images["n"]], set_name, list(cfg.eval.degradations), cfg.scale,
                                  cfg.eval.noise_seed, images["crop"])
    except Exception as e:  # noqa: BLE001 - pictures must never fail a job with its results in hand
        log.warning("image panels not rendered: %s", e)
        return None


def _record_trial(cfg: DictConfig, job_dir: Path, run: JobRun) -> None:
    """An Optuna trial's job: its folder and wandb run on the trial (user attributes), so
    optuna-dashboard leads to them."""
    o = cfg.get("optuna")
    if not o or o.trial is None:
        return
    from sweeper.optuna_report import record_job

    attrs = {"job_dir": str(Path(job_dir).absolute()), "wandb_run_id": run.id}
    if run.files_dir is not None and cfg.logger.mode == "offline":
        attrs["wandb_dir"] = str(run.files_dir.absolute())
    url = getattr(run.run, "url", None) if cfg.logger.mode == "online" else None
    if url:
        attrs["wandb_url"] = url
    record_job(o.storage, o.trial, attrs)


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
