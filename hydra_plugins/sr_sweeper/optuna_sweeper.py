"""A Hydra sweeper on current Optuna (>= 4): search, survive bad trials, prune hopeless ones.

    python -m sweeper -m hydra/sweeper=optuna 'dropout.p=interval(0.1,0.9)' \\
        'train.lr=tag(log,interval(1e-4,1e-2))' 'dropout.position=choice(last,hr,all)' \\
        hydra.sweeper.n_trials=40 hydra.sweeper.n_jobs=4 launcher=local_parallel

Search spaces come from the command line (Hydra's sweep syntax: ``interval``,
``tag(log, interval)``, ``choice``, ``range``) and from ``hydra.sweeper.params`` in presets.
Each batch of ``n_jobs`` trials goes through the configured launcher (so trials run in
parallel under local_parallel or slurm). The study lives in persistent storage (SQLite in
the sweep folder, or Optuna's journal file on a shared filesystem for SLURM), so running
the same command again adds trials to the same study. A trial whose job raises, is killed,
or returns NaN/inf is recorded as failed with its reason; the study stops only when
failures exceed ``max_failure_rate``. Jobs report validation PSNR to their trial and stop
when the pruner says so (``sweeper.job``). Unlike the grid sweeper it takes no sweep lock:
two drivers on one study are Optuna's way to search in parallel, each asking for its own
trials (a trial is never run twice). Results: ``optimization_results.yaml``,
``trials.csv`` and parameter importances in the sweep folder. The study's values are named
after the objectives (``Study.set_metric_names``), and each trial's job records its folder and
wandb run as trial user attributes (``job_dir``, ``wandb_run_id``, ``wandb_dir`` offline,
``wandb_url`` online), so optuna-dashboard leads from a trial to its run.
"""
from __future__ import annotations

import fnmatch
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.sr_sweeper.validating_sweeper import failure_reason
from sweeper.optuna_report import PRUNERS, SearchSpaceError, make_pruner, open_storage
from sweeper.preflight import PreflightError, check_output_folder, validate_config

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "gp", "random", "grid", "cmaes")
__all__ = ["OptunaSweeper", "PRUNERS", "SearchSpaceError", "distribution", "make_pruner", "make_sampler",
           "objective_values", "tell"]


def distribution(override: Override):
    """An Optuna distribution from a Hydra sweep override (None for a fixed value)."""
    import optuna.distributions as d

    if not override.is_sweep_override():
        return None
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return d.CategoricalDistribution([c for c in override.sweep_iterator()])
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in values) and value.step == 1:
            return d.IntDistribution(int(value.start), int(value.stop) - 1)
        return d.CategoricalDistribution(values)
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise SearchSpaceError(f"{override.input_line}: unsupported sweep; use interval(a,b), "
                           "tag(log,interval(a,b)), choice(...) or range(a,b)")


def objective_values(metrics: dict, objectives: list[str]) -> list[float]:
    """Each objective is a metric key or a glob over keys (averaged), e.g. 'test/*/noise/psnr'."""
    values = []
    for pattern in objectives:
        matched = [float(v) for k, v in metrics.items() if fnmatch.fnmatchcase(k, pattern)]
        if not matched:
            raise KeyError(f"objective {pattern!r} matches none of the job's metrics "
                           f"(e.g. {sorted(metrics)[:3]})")
        values.append(sum(matched) / len(matched))
    return values


def make_sampler(name: str, seed: int | None, space: dict):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "grid":
        grid = {}
        for key, dist in space.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                grid[key] = list(dist.choices)
            elif isinstance(dist, optuna.distributions.IntDistribution) and not dist.log:
                grid[key] = list(range(dist.low, dist.high + 1, dist.step))
            else:
                raise SearchSpaceError(f"sampler=grid needs choice(...) or range(...) for {key}, not an interval")
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise SearchSpaceError(f"hydra.sweeper.sampler={name!r} is unknown; allowed: {', '.join(SAMPLERS)}")


class OptunaSweeper(Sweeper):
    # No defaults: every value, the objective included, is stated once, in conf/hydra/sweeper/optuna.yaml.
    def __init__(self, *, sampler: str, seed: int | None, directions: list[str], objectives: list[str],
                 n_trials: int, n_jobs: int, storage: str | None, study_name: str | None, max_failure_rate: float,
                 pruner: str, pruner_startup_trials: int, pruner_warmup_steps: int, params: dict | None,
                 enqueue: list | None) -> None:
        self.sampler_name, self.seed = sampler, seed
        if not directions:
            raise SearchSpaceError("hydra.sweeper.directions is empty; give one per objective (maximize | minimize)")
        self.directions = list(directions)
        if not objectives:
            raise SearchSpaceError("hydra.sweeper.objectives is empty; name at least one metric key or glob")
        self.objectives = list(objectives)
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.storage, self.study_name = storage, study_name
        self.max_failure_rate = float(max_failure_rate)
        self.pruner_name, self.pruner_startup, self.pruner_warmup = pruner, pruner_startup_trials, pruner_warmup_steps
        self.params = dict(params or {})
        self.enqueue = [list(e) for e in (enqueue or [])]
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # -- the study ---------------------------------------------------------------------------
    def storage_url(self, sweep_dir: Path) -> str:
        if self.storage not in (None, "sqlite", "journal"):
            return str(self.storage)
        on_slurm = "Slurm" in str(self.config.hydra.launcher.get("_target_", ""))
        if self.storage == "journal" or (self.storage is None and on_slurm):
            return f"journal:{sweep_dir / 'optuna.journal'}"
        return f"sqlite:///{sweep_dir / 'optuna.db'}"

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._sweep(arguments)
        except (SearchSpaceError, PreflightError) as e:  # a user error: the message, no traceback
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    def _sweep(self, arguments: list[str]) -> Any:
        import optuna

        space, fixed = self.search_space(arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        check_output_folder(sweep_dir)
        if hasattr(self.launcher, "preflight"):  # e.g. SLURM: does a task fit on a node?
            self.launcher.preflight()
        url = self.storage_url(sweep_dir)
        name = self.study_name or str(self.config.get("sweep_name") or "study")
        study, already = self.open_study(url, name, space)
        log.info("optuna: study %r in %s (%d trials so far), %d new trials, %d at a time, sampler %s, pruner %s",
                 name, url, already, self.n_trials, self.n_jobs, self.sampler_name, self.pruner_name)

        done = failed = 0
        exhausted = False
        while done < self.n_trials and not exhausted:
            batch = min(self.n_jobs, self.n_trials - done)
            trials, jobs = [], []
            for _ in range(batch):
                trial = study.ask(space)
                job = self.trial_overrides(trial, fixed, url, name)
                problem = self.validate(job)
                if problem:
                    _fail_reason(study, trial, problem)
                    exhausted |= tell(study, trial, state=optuna.trial.TrialState.FAIL)
                    log.warning("trial %d: invalid settings, failed: %s", trial.number, problem)
                    failed += 1
                    done += 1
                    continue
                trials.append(trial)
                jobs.append(job)
            returns = self.launcher.launch(jobs, initial_job_idx=already + done) if jobs else []
            for trial, ret in zip(trials, returns):
                study_exhausted, trial_failed = self.record(study, trial, ret)
                exhausted |= study_exhausted
                failed += trial_failed
                done += 1
            if failed / self.n_trials > self.max_failure_rate:  # a fraction of the trials asked for
                self.write_results(study, sweep_dir)
                print(f"error: {failed} of {done} trials failed, over max_failure_rate={self.max_failure_rate} of "
                      f"n_trials={self.n_trials}; "
                      f"study stopped. Reasons: optuna trials' user attr 'fail_reason', {sweep_dir / 'trials.csv'}",
                      file=sys.stderr)
                raise SystemExit(1)
        self.write_results(study, sweep_dir)
        return study

    def search_space(self, arguments: list[str]) -> tuple[dict, list[str]]:
        """(the distributions of the swept keys, the other overrides as typed) out of
        ``hydra.sweeper.params`` and the command line; raises ``SearchSpaceError``."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        space, fixed = {}, []
        for o in overrides:
            dist = distribution(o)
            if dist is None:
                fixed.append(o.input_line)
            else:
                space[o.get_key_element()] = dist
        if not space and not self.enqueue:
            raise SearchSpaceError("no search space: give e.g. 'dropout.p=interval(0.1,0.9)' or hydra.sweeper.params")
        if len(self.directions) != len(self.objectives):
            raise SearchSpaceError(f"{len(self.objectives)} objectives but {len(self.directions)} directions")
        if len(self.objectives) > 1 and self.pruner_name not in (None, "none"):
            raise SearchSpaceError(f"hydra.sweeper.pruner={self.pruner_name} needs a single objective "
                                   "(Optuna prunes on one reported value); use pruner=none")
        return space, fixed

    def open_study(self, url: str, name: str, space: dict):
        """(the study, created or loaded, its number of trials before this run); a new study gets
        the ``enqueue`` trials first."""
        import optuna

        study = optuna.create_study(
            storage=open_storage(url), study_name=name, load_if_exists=True,
            sampler=make_sampler(self.sampler_name, self.seed, space),
            pruner=make_pruner(self.pruner_name, self.pruner_startup, self.pruner_warmup),
            directions=self.directions)
        set_metric_names(study, self.objectives)
        already = len(study.trials)
        if already == 0:
            for e in self.enqueue:
                params = {k: v for k, v in (x.split("=", 1) for x in e) if k in space}
                extra = [x for x in e if x.split("=", 1)[0] not in space]
                study.enqueue_trial({k: _typed(space[k], v) for k, v in params.items()},
                                    user_attrs={"extra_overrides": extra})
        return study, already

    def trial_overrides(self, trial, fixed: list[str], url: str, name: str) -> list[str]:
        """The job of a trial: the fixed overrides, the trial's parameters, an enqueued trial's extra
        overrides, and where it reports (``optuna.*``)."""
        job = fixed + [f"{k}={v}" for k, v in trial.params.items()]
        job += list(trial.user_attrs.get("extra_overrides", []))
        # the job reports to this trial and decides on pruning with the same pruner
        job += [f"optuna.storage='{url}'", f"optuna.study='{name}'", f"optuna.trial={trial._trial_id}",
                f"optuna.pruner={self.pruner_name}", f"optuna.pruner_startup_trials={self.pruner_startup}",
                f"optuna.pruner_warmup_steps={self.pruner_warmup}"]
        return job

    def record(self, study, trial, ret) -> tuple[bool, bool]:
        """Tell the study how a trial's job ended: (whether the study is exhausted, whether the
        trial failed)."""
        import optuna

        state, values, reason = self.outcome(ret)
        if reason:
            _fail_reason(study, trial, reason)
        if state == "pruned":
            exhausted = tell(study, trial, state=optuna.trial.TrialState.PRUNED)
            log.info("trial %d pruned at step %s", trial.number, ret.return_value.get("pruned_at"))
        elif state == "failed":
            exhausted = tell(study, trial, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, reason)
        else:
            exhausted = tell(study, trial, values if len(values) > 1 else values[0])
            log.info("trial %d: %s -> %s", trial.number, trial.params, values)
        return exhausted, state == "failed"

    def validate(self, job: list[str]) -> str | None:
        try:
            validate_config(self.hydra_context.config_loader.load_sweep_config(self.config, job))
        except PreflightError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - a composition error is this trial's failure
            return f"{type(e).__name__}: {e}"
        return None

    def outcome(self, ret) -> tuple[str, list[float], str | None]:
        if ret.status != JobStatus.COMPLETED:
            return "failed", [], failure_reason(ret)[:500]
        value = ret.return_value or {}
        if value.get("pruned_at") is not None:
            return "pruned", [], None
        try:
            values = objective_values(value, self.objectives)
        except KeyError as e:
            return "failed", [], str(e)
        if not all(math.isfinite(v) for v in values):
            return "failed", [], f"objective is not finite: {values}"
        return "complete", values, None

    def write_results(self, study, sweep_dir: Path) -> None:
        import optuna

        from srcore.atomic import atomic_write
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        out: dict[str, Any] = {"name": "optuna", "study": study.study_name, "directions": self.directions,
                               "objectives": self.objectives,
                               "trials": {s.name.lower(): sum(t.state == s for t in study.trials)
                                          for s in optuna.trial.TrialState}}
        if complete:
            if len(self.directions) == 1:
                out["best_params"] = study.best_trial.params
                out["best_value"] = study.best_trial.value
                out["best_trial"] = study.best_trial.number
                if len(complete) >= 2 and study.best_trial.params:
                    try:
                        out["param_importances"] = {k: float(v) for k, v in
                                                    optuna.importance.get_param_importances(study).items()}
                    except Exception as e:  # noqa: BLE001 - importances need a varied history
                        out["param_importances"] = f"not available: {e}"
            else:
                out["pareto_front"] = [{"trial": t.number, "params": t.params, "values": t.values}
                                       for t in study.best_trials]
        text = OmegaConf.to_yaml(OmegaConf.create(out))
        atomic_write(sweep_dir / "optimization_results.yaml", lambda f: f.write(text), mode="w")
        frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "duration", "user_attrs")) \
            if len(self.directions) == 1 else study.trials_dataframe()
        atomic_write(sweep_dir / "trials.csv", lambda f: frame.to_csv(f, index=False), mode="w")
        log.info("optuna: results in %s", sweep_dir / "optimization_results.yaml")


def tell(study, trial, values=None, state=None) -> bool:
    """study.tell; True when the sampler says the search is over (the grid sampler's last
    point: it calls Study.stop, which Optuna only allows inside study.optimize — the trial
    is recorded before that call fails)."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
        return True
    return False


def set_metric_names(study, objectives: list[str]) -> None:
    """Name the study's values after its objectives (optuna-dashboard shows them), where this
    Optuna has ``Study.set_metric_names``."""
    import warnings

    if not hasattr(study, "set_metric_names"):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        study.set_metric_names(list(objectives))


def _fail_reason(study, trial, reason: str) -> None:
    trial.set_user_attr("fail_reason", reason[:500])


def _typed(dist, value: str):
    import optuna.distributions as d

    if isinstance(dist, d.FloatDistribution):
        return float(value)
    if isinstance(dist, d.IntDistribution):
        return int(value)
    for choice in dist.choices:
        if str(choice) == value:
            return choice
    return value
