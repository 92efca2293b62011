"""A job's side of an Optuna trial: report validation PSNR, stop when the pruner says so.

The Optuna sweeper passes ``optuna.storage``, ``optuna.study`` and ``optuna.trial`` (the
trial id) to each trial's job; the job opens the same storage, so reports from jobs in
other processes or on other nodes reach the study.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

PRUNERS = ("none", "median", "successive_halving", "hyperband")


class SearchSpaceError(ValueError):
    pass


def make_pruner(name: str, n_startup_trials: int = 2, n_warmup_steps: int = 0):
    import optuna

    if name in ("none", None):
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    raise SearchSpaceError(f"hydra.sweeper.pruner={name!r} is unknown; allowed: {', '.join(PRUNERS)}")


class Pruned(Exception):
    def __init__(self, step: int, value: float):
        super().__init__(f"pruned by the study at iteration {step} (validation {value:.3f})")
        self.step = step


def open_storage(url: str):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend
        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


class TrialReporter:
    def __init__(self, storage_url: str, study_name: str, trial_id: int, pruner: str = "none",
                 pruner_startup_trials: int = 2, pruner_warmup_steps: int = 0):
        import optuna

        # the pruner is not kept in the storage: the job builds the sweeper's own
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url),
                                  pruner=make_pruner(pruner, pruner_startup_trials, pruner_warmup_steps))
        self.trial = optuna.trial.Trial(study, int(trial_id))

    def report(self, value: float, step: int) -> None:
        """Record an intermediate value; raise Pruned if the trial should stop here."""
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise Pruned(step, value)


def record_job(storage_url: str, trial_id: int, attrs: dict) -> None:
    """Write ``attrs`` (the job's folder, its wandb run id, ...) as user attributes of its trial,
    so optuna-dashboard shows where each trial's job and run are. Never fails the job."""
    try:
        storage = open_storage(storage_url)
        for key, value in attrs.items():
            storage.set_trial_user_attr(int(trial_id), key, value)
    except Exception as e:  # noqa: BLE001 - bookkeeping must not stop the trial
        log.warning("optuna: could not record the job on trial %s: %s", trial_id, e)
