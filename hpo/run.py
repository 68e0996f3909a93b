"""`hpo run`: open (or join) a study and run trials from the shared budget until it is spent (DESIGN §6–§7)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import optuna

from hpo.errors import SpecError
from hpo.objective import Objective
from hpo.progress import TrialPrinter
from hpo.pruners import PRUNERS, make_pruner
from hpo.samplers import SAMPLERS, make_sampler, worker_seed
from hpo.spec import StudySpec, check_compatible, load_spec, spec_summary
from hpo.storage import mask_url, open_storage, reap_stale, resolve_url, this_worker
from hpo.worker import WorkerResult, run_worker, study_lock
from model.config import parse_sets
from model.train import stages

log = logging.getLogger(__name__)

SMALL_PROFILE = "small"


@dataclass
class RunOptions:
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


@dataclass
class RunSummary:
    study_name: str
    worker: WorkerResult
    best_value: float | None
    best_params: dict[str, Any]
    best_number: int | None
    seconds: float


def prepare(opts: RunOptions) -> tuple[StudySpec, dict[str, Any]]:
    """Validate everything the user gave (spec, names, overrides) before anything touches the storage."""
    if opts.n_trials <= 0:
        raise SpecError(f"--n-trials must be > 0, got {opts.n_trials}: it is the study's total budget")
    if opts.timeout is not None and opts.timeout <= 0:
        raise SpecError(f"--timeout must be > 0 seconds, got {opts.timeout}")
    overrides = parse_sets(opts.sets)
    if opts.data is not None:
        overrides["data"] = opts.data
    if opts.device is not None:
        overrides["device"] = opts.device
    profile = opts.profile
    if profile is None:
        raw = load_spec(opts.study)  # which data would the trials use?
        uses_data = bool(overrides.get("data", raw.fixed.get("data", "")))
        profile = "" if uses_data or SMALL_PROFILE not in raw.profiles else SMALL_PROFILE
    spec = load_spec(opts.study, profile or None)
    if opts.study_name:
        spec.name = opts.study_name
    if opts.seed is not None:
        spec.seed = opts.seed
    if opts.sampler:
        spec.sampler, spec.sampler_options = opts.sampler, {} if opts.sampler != spec.sampler else spec.sampler_options
    if opts.pruner:
        spec.pruner, spec.pruner_options = opts.pruner, {} if opts.pruner != spec.pruner else spec.pruner_options
    if spec.sampler not in SAMPLERS:
        raise SpecError(f"unknown sampler {spec.sampler!r}: use one of {', '.join(SAMPLERS)}")
    if spec.pruner not in PRUNERS:
        raise SpecError(f"unknown pruner {spec.pruner!r}: use one of {', '.join(PRUNERS)}")
    searched = sorted(set(overrides) & set(spec.space))
    if searched:
        raise SpecError(
            f"{', '.join(searched)} is searched by this study: drop it from --set, or fix it in a spec "
            "of your own (studies/NAME.toml) with a new --study-name"
        )
    base = spec.base_config(overrides)  # validates --set values against the fixed fields
    _device_label(base.device)  # `--device cuda` on a machine without one fails here, before the storage
    make_sampler(spec.sampler, spec.seed, spec.sampler_options)  # option errors surface now, not mid-study
    return spec, overrides


def open_study(
    spec: StudySpec, storage: Any, sampler_seed: int | None = None, overrides: dict[str, Any] | None = None
) -> optuna.Study:
    """Load the study if it exists (checking direction and space), else create it with the spec's attrs.

    `overrides` (`--set epochs=...`) size the pruner to the epochs the trials will really run.
    """
    epochs = sum(n for *_, n in stages(spec.base_config(overrides)))
    sampler = make_sampler(spec.sampler, sampler_seed if sampler_seed is not None else spec.seed, spec.sampler_options)
    pruner = make_pruner(spec.pruner, epochs, spec.pruner_options)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            study_name=spec.name,
            direction=optuna.study.StudyDirection[spec.direction.upper()],
            load_if_exists=True,
        )
    check_compatible(study, spec)
    return study


def run_study(opts: RunOptions) -> RunSummary:
    """Run this worker's share of the study; returns when the global budget is spent or on timeout."""
    started = time.perf_counter()
    spec, overrides = prepare(opts)
    url = resolve_url(opts.storage)
    storage = open_storage(url)
    study = open_study(spec, storage, overrides=overrides)
    with study_lock(study):
        # First worker in records the spec and enqueues the warm-start configs; later ones get a join index,
        # which derives their distinct sampler seed (the same TPE seed on every worker repeats trials).
        attrs = study.user_attrs
        if "space" not in attrs:
            for k, v in spec_summary(spec).items():
                study.set_user_attr(k, v)
            study.set_user_attr("sampler", spec.sampler)
            study.set_user_attr("pruner", spec.pruner)
            study.set_user_attr("seed", spec.seed)
            for params in spec.enqueue:
                study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)
        join = int(attrs.get("workers_joined", 0))
        study.set_user_attr("workers_joined", join + 1)
    reaped = reap_stale(study)
    seed = worker_seed(spec.seed, str(join))
    study = open_study(spec, storage, sampler_seed=seed, overrides=overrides)
    base = spec.base_config(overrides)
    data_name = base.data or "synthetic (built-in)"
    printer = TrialPrinter(study, quiet=opts.quiet)
    printer.say(
        f"study {spec.name} | data {data_name} | profile {spec.profile or 'none'} | storage {mask_url(url)} | "
        f"sampler {spec.sampler} (seed {seed}) | pruner {_with_options(spec.pruner, spec.pruner_options)} | "
        f"device {_device_label(base.device)} | "
        f"budget {opts.n_trials} trials" + (f" | reaped {reaped} stale" if reaped else "")
    )
    objective = Objective(spec, overrides, epoch_hook_factory=printer.epoch_hook, after_train=_after_train(url))
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


def _device_label(name: str) -> str:
    from model.device import resolve_device

    resolved = str(resolve_device(name))
    return resolved if resolved == name else f"{resolved} ({name})"


def _after_train(url: str) -> Any:
    from hpo.artifacts import upload_trial_artifacts

    def after(trial: optuna.Trial, config: Any, data: Any, result: Any) -> None:
        upload_trial_artifacts(url, trial, config, data, result)

    return after


def _summary(study: optuna.Study, result: WorkerResult, seconds: float) -> RunSummary:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return RunSummary(study.study_name, result, None, {}, None, seconds)
    best = study.best_trial
    return RunSummary(study.study_name, result, best.value, dict(best.params), best.number, seconds)


def _with_options(name: str, options: dict[str, Any]) -> str:
    """'rungs (at_epochs [1, 2], reduction_factors [2, 16])': a pruner as the spec configured it."""
    return f"{name} ({', '.join(f'{k} {v}' for k, v in options.items())})" if options else name
