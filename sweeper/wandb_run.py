"""A job's wandb run: its own service, started early; logging that survives a lost service;
the final metrics as tables on the run's page; image panels; system metrics; the console log.

Offline by default (``logger.mode``); the run id is derived from the sweep and job names, so a
rerun or a requeue resumes the same run. What a run page holds beside the curves
(``conf/logger/wandb.yaml``, each with an off switch):

- ``images/<degradation>``: per test degradation, a panel of LR | SR | HR crops of the first
  ``logger.images.n`` images of the first test set (centre crops of ``logger.images.crop`` HR
  pixels, LR shown nearest-neighbour enlarged) -- the same crops in every run, so runs compare
  side by side (``logger.images.panels``);
- ``val/images``: the same panel for the first validation image at every ``train.val_every``
  (``logger.images.val``);
- system metrics (wandb's ``_stats``: CPU, memory, disk, GPU; ``logger.system_metrics``);
- the console output (``files/output.log``, the Logs tab; ``logger.console``).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sweeper.naming import run_id

log = logging.getLogger(__name__)


def own_wandb_service() -> None:
    """Make this job start its own wandb service. wandb exports its service's address
    (WANDB_SERVICE) to child processes, so a job launched by any process that used wandb
    (a notebook, a test session, analysis.interpret) would log through that parent's
    service; a killed job's run then stays registered there, and the rerun is refused
    with "run ID ... is in use". The token names the pid that started the service."""
    token = os.environ.get("WANDB_SERVICE")
    if token and token.split("-")[1:2] != [str(os.getpid())]:
        os.environ.pop("WANDB_SERVICE")


def start_service(cfg: DictConfig) -> threading.Thread | None:
    """Start wandb's service process while the job loads its data and builds its model:
    ~0.5-1 s of every job process's start-up otherwise, spent waiting for that process.
    ``JobRun`` joins the thread before ``wandb.init``, so the two never overlap."""
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


def metrics_tables(rows: list[dict], means: dict, seal: dict | None = None) -> dict:
    """The final metrics as wandb tables: per (set, degradation), per image, and SEAL's per case."""
    import wandb

    tables = {}
    if seal:
        columns = list(seal["cases"][0])
        tables["seal/cases"] = wandb.Table(columns=columns, data=[[c[k] for k in columns] for c in seal["cases"]])
    if not rows:
        return tables

    per_set: dict[tuple[str, str], dict] = {}
    for key, value in means.items():
        test_set, deg, name = key.split("/")
        per_set.setdefault((test_set, deg), {})[name] = value
    names = sorted({n for v in per_set.values() for n in v})
    columns = list(rows[0])
    return {**tables,
            "test/metrics": wandb.Table(columns=["set", "degradation", *names],
                                        data=[[s, d, *(v.get(n) for n in names)] for (s, d), v in per_set.items()]),
            "test/per_image": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])}


# --- image panels ------------------------------------------------------------------------------

GAP = 2  # white pixels between the crops of a panel


def centre_box(shape: tuple[int, ...], crop: int, scale: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centre crop of an HR image: at most ``crop`` pixels each
    way, on the LR grid (multiples of ``scale``)."""
    h, w = shape[:2]
    height, width = (max(scale, min(crop, n) // scale * scale) for n in (h, w))
    return (h - height) // 2 // scale * scale, (w - width) // 2 // scale * scale, height, width


def sr_crop(net, lr: np.ndarray, box: tuple[int, int, int, int], scale: int, margin: int = 8) -> np.ndarray:
    """The SR of the HR region ``box`` from its LR region and ``margin`` LR pixels of context on
    each side (so the crop's borders look as in the whole image's SR)."""
    from srcore.evaluation.scoring import super_resolve

    top, left, height, width = (v // scale for v in box)
    t0, l0 = max(top - margin, 0), max(left - margin, 0)
    t1, l1 = min(top + height + margin, lr.shape[0]), min(left + width + margin, lr.shape[1])
    weight = next(iter(net.parameters()), None)
    device = weight.device if weight is not None else "cpu"
    sr = super_resolve(net, lr[t0:t1, l0:l1], device)
    y, x = (top - t0) * scale, (left - l0) * scale
    return sr[y: y + height * scale, x: x + width * scale]


def panel(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], scale: int) -> np.ndarray:
    """One image: a row per (LR crop, SR crop, HR crop), LR enlarged nearest-neighbour, on white."""
    lines = []
    for lr, sr, hr in rows:
        big = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
        gap = np.full((hr.shape[0], GAP, 3), 255, np.uint8)
        lines.append(np.concatenate([big, gap, sr, gap, hr], axis=1))
    width = max(line.shape[1] for line in lines)
    out = np.full((sum(line.shape[0] for line in lines) + GAP * (len(lines) - 1), width, 3), 255, np.uint8)
    y = 0
    for line in lines:
        out[y: y + line.shape[0], : line.shape[1]] = line
        y += line.shape[0] + GAP
    return out


def degradation_panels(net, images: list[tuple[str, np.ndarray]], set_name: str, degradations: list[str],
                       scale: int, base_seed: int, crop: int) -> dict[str, tuple[np.ndarray, str]]:
    """{degradation: (panel, caption)} for ``images`` (name, HR) of ``set_name``, with the test
    protocol's own LR images (``srcore.evaluation.paper``: same degradation, same noise seed)."""
    from srcore.evaluation.paper import make_test_lr, mod_crop, noise_seed

    hrs = [(name, mod_crop(hr, scale)) for name, hr in images]
    boxes = [centre_box(hr.shape, crop, scale) for _, hr in hrs]
    out = {}
    for deg in degradations:
        rows = []
        for (name, hr), box in zip(hrs, boxes):
            lr = make_test_lr(hr, deg, scale, seed=noise_seed(set_name, name, deg, base_seed))
            top, left, height, width = box
            rows.append((lr[top // scale: (top + height) // scale, left // scale: (left + width) // scale],
                         sr_crop(net, lr, box, scale), hr[top: top + height, left: left + width]))
        out[deg] = (panel(rows, scale), f"{deg}: LR (x{scale} nearest) | SR | HR; {set_name}: "
                                         + ", ".join(name for name, _ in hrs))
    return out


class ValidationImages:
    """Wraps a job's validator: after each validation, the panel (LR | SR | HR, clean) of the
    first validation image; ``pop`` hands it to the log call of that validation's metrics."""

    def __init__(self, validate, images: list[tuple[str, np.ndarray]], set_name: str, scale: int, crop: int,
                 base_seed: int = 0):
        self.validate, self.images, self.set_name = validate, images[:1], set_name
        self.scale, self.crop, self.base_seed = scale, crop, base_seed
        self.pending = None

    def __call__(self, net) -> dict:
        values = self.validate(net)
        try:
            (image, caption), = degradation_panels(net, self.images, self.set_name, ["clean"], self.scale,
                                                    self.base_seed, self.crop).values()
            self.pending = (image, caption)
        except Exception as e:  # noqa: BLE001 - a picture must never stop training
            log.warning("validation image not rendered: %s", e)
        return values

    def pop(self) -> dict:
        """``{"val/images": wandb.Image}`` once after a validation, else ``{}``."""
        if self.pending is None:
            return {}
        import wandb

        (image, caption), self.pending = self.pending, None
        return {"val/images": wandb.Image(image, caption=caption)}


class JobRun:
    """The job's wandb run. ``log`` never fails the job: a signal sent to the whole job step
    (scancel, preemption) also ends wandb's service process, and training must still reach
    its next iteration and save its state. ``concurrent``: one of several runs open at once in
    this process (a fused group's jobs). With ``logger.mode=disabled`` there is no run and
    wandb is never imported (a machine with only PyTorch runs such jobs): every call is a no-op."""

    def __init__(self, cfg: DictConfig, job_dir: Path, job_name: str, tags: list[str],
                 service_start: threading.Thread | None, concurrent: bool = False):
        if service_start is not None:
            service_start.join()
        self.job_name, self.lost = job_name, None
        if cfg.logger.mode == "disabled":
            self.run, self.id = None, run_id(cfg.sweep_name, job_name)
            return
        import wandb

        self.run = wandb.init(
            project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode,
            group=cfg.sweep_name or "runs", job_type="train", name=job_name,
            tags=[t[:64] for t in tags], id=run_id(cfg.sweep_name, job_name), resume="allow",
            # a fused group's jobs log at once from one process: one run each
            **({"reinit": "create_new"} if concurrent else {}),
            # "swept": the job's own overrides, so the dashboard's run table can group by them
            dir=str(job_dir), config={**OmegaConf.to_container(cfg, resolve=True),
                                      "swept": dict(t.split("=", 1) for t in tags if "=" in t)},
            settings=wandb.Settings(console="wrap" if cfg.logger.get("console", True) else "off",
                                    x_disable_stats=not cfg.logger.get("system_metrics", True),
                                    x_stats_sampling_interval=float(cfg.logger.get("system_metrics_every_s", 15))),
        )
        self.id = self.run.id

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.lost is not None or self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as e:  # noqa: BLE001
            self.lost = e
            log.warning("%s: wandb stopped logging (%s); training goes on", self.job_name, e)

    def log_results(self, rows: list[dict], means: dict, summary: dict, seal: dict | None = None,
                    panels: dict[str, tuple[np.ndarray, str]] | None = None) -> None:
        """The final metrics: ``summary`` into the run's summary, the tables onto its page, and
        ``panels`` ({degradation: (image, caption)}) as ``images/<degradation>``."""
        if self.run is None:
            return
        import wandb

        self.summarize(summary)
        logged = metrics_tables(rows, means, seal)
        logged.update({f"images/{deg}": wandb.Image(image, caption=caption)
                       for deg, (image, caption) in (panels or {}).items()})
        if logged:
            self.run.log(logged)

    @property
    def files_dir(self) -> Path | None:
        """The run's folder (offline: ``<job>/wandb/offline-run-<time>-<id>``), or None."""
        if self.run is None:
            return None
        try:
            return Path(self.run.dir).parent
        except Exception:  # noqa: BLE001 - a disabled run has no folder
            return None

    def summarize(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self, exit_code: int) -> bool:
        """Finish the run; False (with a warning) when wandb could not."""
        if self.run is None:
            return True
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as e:  # a signal to the whole job step (scancel) may have ended wandb's service
            log.warning("%s: wandb could not finish the run: %s", self.job_name, e)
            return False
        return self.lost is None
