"""`hpo run`: validate everything, open (or join) the study once, run trials until the shared budget is spent.

The order matters (docs/ARCHITECTURE.md, "The worker protocol"): every user input is checked by `prepare`
before the storage is touched; the study is opened once; under the study lock the first worker records the
spec and enqueues the warm-start configs, and every worker takes a join index that derives its sampler seed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any

import optuna

from hpo.artifacts import upload_trial_artifacts
from hpo.errors import SpecError
from hpo.locks import study_lock
from hpo.objective import Objective
from hpo.progress import TrialPrinter
from hpo.pruners import make_pruner
from hpo.reaper import reap_stale, this_worker
from hpo.samplers import make_sampler, worker_seed
from hpo.spec import StudySpec, check_compatible, load_run_spec, spec_summary
from hpo.storage import mask_url, open_storage, resolve_url
from hpo.worker import WorkerResult, run_worker
from model.config import TrainConfig, parse_sets
from model.dataset import DataSet
from model.device import resolve_device
from model.train import TrainResult, total_epochs

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """What `hpo run` was asked; the field names are the command's argparse destinations."""

    study: str  # spec name (studies/NAME.toml) or path
    n_trials: int = 50
    storage: str | None = None
    sampler: str | None = None
    pruner: str | None = None
    data: str | None = None
    device: str | None = None
    seed: int | None = None
    timeout: float | None = None
    sets: list[str] = field(default_factory=list)
    study_name: str | None = None
    profile: str | None = None  # None: `small` when no data set is given, else none
    quiet: bool = False

    @classmethod
    def from_args(cls, args: Any) -> RunOptions:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


@dataclass
class RunPlan:
    """A run's inputs, validated and built once, before anything touches the storage."""

    spec: StudySpec
    overrides: dict[str, Any]  # --set, --data, --device: applied over every trial's config
    base: TrainConfig  # the fixed fields with the overrides: what every trial starts from
    device: str  # the device the trials resolve to, as printed
    sampler: optuna.samplers.BaseSampler  # seeded with the study seed (worker 0's)
    pruner: optuna.pruners.BasePruner  # sized to the epochs the trials really run


@dataclass
class RunSummary:
    study_name: str
    worker: WorkerResult
    best_value: float | None
    best_params: dict[str, Any]
    best_number: int | None
    seconds: float


def prepare(opts: RunOptions) -> RunPlan:
    """Validate everything the user gave (spec, names, overrides, options) before anything touches the storage.

    Raises:
        SpecError, ConfigError: one line naming the problem and the fix.
    """
    if opts.n_trials <= 0:
        raise SpecError(f"--n-trials must be > 0, got {opts.n_trials}: it is the study's total budget")
    if opts.timeout is not None and opts.timeout <= 0:
        raise SpecError(f"--timeout must be > 0 seconds, got {opts.timeout}")
    overrides = parse_sets(opts.sets)
    if opts.data is not None:
        overrides["data"] = opts.data
    if opts.device is not None:
        overrides["device"] = opts.device
    spec = load_run_spec(opts.study, opts.profile, overrides.get("data"))
    if opts.study_name:
        spec.name = opts.study_name
    if opts.seed is not None:
        spec.seed = opts.seed
    if opts.sampler:
        spec.sampler, spec.sampler_options = opts.sampler, {} if opts.sampler != spec.sampler else spec.sampler_options
    if opts.pruner:
        spec.pruner, spec.pruner_options = opts.pruner, {} if opts.pruner != spec.pruner else spec.pruner_options
    searched = sorted(set(overrides) & set(spec.space))
    if searched:
        raise SpecError(
            f"{', '.join(searched)} is searched by this study: drop it from --set, or fix it in a spec "
            "of your own (studies/NAME.toml) with a new --study-name"
        )
    base = spec.base_config(overrides)  # validates --set values against the fixed fields
    resolved = str(resolve_device(base.device))  # `--device cuda` on a machine without one fails here
    device = resolved if resolved == base.device else f"{resolved} ({base.device})"
    sampler = make_sampler(spec.sampler, spec.seed, spec.sampler_options)
    pruner = make_pruner(spec.pruner, total_epochs(base), spec.pruner_options)
    return RunPlan(spec, overrides, base, device, sampler, pruner)


def open_study(plan: RunPlan, storage: Any) -> optuna.Study:
    """Load the study if it exists (checking direction and space), else create it."""
    spec = plan.spec
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=plan.sampler, pruner=plan.pruner)
    except KeyError:
        study = optuna.create_study(
            storage=storage,
            sampler=plan.sampler,
            pruner=plan.pruner,
            study_name=spec.name,
            direction=optuna.study.StudyDirection[spec.direction.upper()],
            load_if_exists=True,
        )
    check_compatible(study, spec)
    return study


def join(study: optuna.Study, spec: StudySpec) -> int:
    """Join the study under its lock; returns this worker's join index (0 for the first worker).

    The first worker in records the spec and enqueues the warm-start configs. The index derives each worker's
    sampler seed (the same TPE seed on every worker repeats trials).
    """
    with study_lock(study):
        attrs = study.user_attrs
        if "space" not in attrs:
            for k, v in spec_summary(spec).items():
                study.set_user_attr(k, v)
            study.set_user_attr("sampler", spec.sampler)
            study.set_user_attr("pruner", spec.pruner)
            study.set_user_attr("seed", spec.seed)
            for params in spec.enqueue:
                study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)
        index = int(attrs.get("workers_joined", 0))
        study.set_user_attr("workers_joined", index + 1)
    return index


def run_study(opts: RunOptions) -> RunSummary:
    """Run this worker's share of the study; returns when the global budget is spent or on timeout."""
    started = time.perf_counter()
    plan = prepare(opts)
    spec = plan.spec
    url = resolve_url(opts.storage)
    study = open_study(plan, open_storage(url))
    seed = worker_seed(spec.seed, str(join(study, spec)))
    if seed != spec.seed:  # a later worker: the sampler gets its own seed (Optuna lets a study's sampler change)
        study.sampler = make_sampler(spec.sampler, seed, spec.sampler_options)
    reaped = reap_stale(study)
    printer = TrialPrinter(study, quiet=opts.quiet)
    printer.say(
        f"study {spec.name} | data {plan.base.data or 'synthetic (built-in)'} | profile {spec.profile or 'none'} | "
        f"storage {mask_url(url)} | sampler {spec.sampler} (seed {seed}) | "
        f"pruner {_with_options(spec.pruner, spec.pruner_options)} | device {plan.device} | "
        f"budget {opts.n_trials} trials" + (f" | reaped {reaped} stale" if reaped else "")
    )

    def after_train(trial: optuna.Trial, config: TrainConfig, data: DataSet, result: TrainResult) -> None:
        upload_trial_artifacts(url, trial, config, data, result)

    objective = Objective(spec, plan.overrides, epoch_hook_factory=printer.epoch_hook, after_train=after_train)
    log.debug("worker %s", this_worker())
    result = run_worker(
        study,
        objective,
        opts.n_trials,
        timeout=opts.timeout,
        on_trial_start=printer.trial_started,
        on_trial_end=printer.trial_finished,
        distributions=spec.space,
    )
    summary = _summary(study, result, time.perf_counter() - started)
    printer.summary(summary.best_value, summary.best_number, summary.best_params, result, summary.seconds)
    return summary


def _summary(study: optuna.Study, result: WorkerResult, seconds: float) -> RunSummary:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return RunSummary(study.study_name, result, None, {}, None, seconds)
    best = study.best_trial
    return RunSummary(study.study_name, result, best.value, dict(best.params), best.number, seconds)


def _with_options(name: str, options: dict[str, Any]) -> str:
    """'rungs (at_epochs [1, 2], reduction_factors [2, 16])': a pruner as the spec configured it."""
    return f"{name} ({', '.join(f'{k} {v}' for k, v in options.items())})" if options else name
