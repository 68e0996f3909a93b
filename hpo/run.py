"""`hpo run`: validate everything, open (or join) the study once, run trials until the shared budget is spent.

The order matters (docs/ARCHITECTURE.md, "The worker protocol"): every user input is checked by `prepare`
before the storage is touched; the study is opened once; under the study lock the first worker records the
spec and enqueues the warm-start configs, and every worker takes a join index that derives its sampler seed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo import confirm
from hpo.artifacts import upload_trial_artifacts
from hpo.errors import SpecError
from hpo.locks import study_lock
from hpo.metric import name_metric
from hpo.objective import ConfirmObjective, Objective
from hpo.progress import TrialPrinter
from hpo.pruners import make_pruner
from hpo.reaper import reap_stale, this_worker
from hpo.results import confirmation_lines, raw_best
from hpo.samplers import check_space_options, make_sampler, worker_seed
from hpo.spec import ConfirmSettings, StudySpec, check_compatible, check_values, load_run_spec, spec_summary
from hpo.storage import mask_url, open_storage, resolve_url
from hpo.trial_checkpoints import TrialCheckpoints, study_checkpoints
from hpo.worker import WorkerResult, run_worker
from model.config import MAX_SEED, TrainConfig, parse_sets
from model.data import check_layout
from model.dataset import DataSet
from model.device import check_device_settings, resolve_device, share_cores, threads_setting
from model.train import TrainResult, total_epochs
from model.words import plural

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
    confirm_top: int | None = None  # over the spec's [confirm] top_k (turns confirmation on)
    confirm_seeds: int | None = None  # over the spec's [confirm] seeds (turns confirmation on)
    confirm_estimate: int | None = None  # over the spec's [confirm] estimate (turns confirmation on)
    no_confirm: bool = False
    threads: int | None = None  # torch threads; None: $HPO_TORCH_THREADS, else the machine's cores split
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
    threads: int | None = None  # torch threads per trial (0: torch's default); None: split the cores (share_cores)


@dataclass
class RunSummary:
    study_name: str
    worker: WorkerResult
    best_value: float | None
    best_params: dict[str, Any]
    best_number: int | None
    seconds: float
    confirm_worker: WorkerResult | None = None  # this worker's confirmation runs, when it confirmed
    confirmation: confirm.Confirmation | None = None


def prepare(opts: RunOptions) -> RunPlan:
    """Validate everything the user gave (spec, names, overrides, options) before anything touches the storage.

    Raises:
        SpecError, ConfigError: one line naming the problem and the fix.
    """
    if opts.n_trials <= 0:
        raise SpecError(f"--n-trials must be > 0, got {opts.n_trials}: it is the study's total budget")
    if opts.timeout is not None and not (math.isfinite(opts.timeout) and opts.timeout > 0):
        raise SpecError(f"--timeout must be a number of seconds > 0, got {opts.timeout}: leave it out for no limit")
    if opts.seed is not None and not 0 <= opts.seed <= MAX_SEED:
        raise SpecError(f"--seed must be in 0..{MAX_SEED}, got {opts.seed}")
    threads = threads_setting(opts.threads)
    overrides = parse_sets(opts.sets)
    if "out" in overrides:
        raise SpecError(
            "--set out=DIR would make every trial write its checkpoints into that one folder: drop it (trials keep "
            "their curves in the study); for a model on disk, `hpo export` the best config and `hpo retrain` it"
        )
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
    _confirm_options(spec, opts)
    searched = sorted(set(overrides) & set(spec.space))
    if searched:
        raise SpecError(
            f"{', '.join(searched)} is searched by this study: drop it from --set, or fix it in a spec "
            "of your own (studies/NAME.toml) with a new --study-name"
        )
    base = spec.base_config(overrides)  # validates --set values against the fixed fields
    if base.out:
        raise SpecError(
            f"{spec.path}: [fixed] out = {base.out!r} would make every trial write its checkpoints into that one "
            "folder: remove it from the spec (`hpo retrain` writes a model)"
        )
    check_values(spec, overrides)  # every bound, choice and enqueued config, with the overrides
    resolved_device = resolve_device(base.device)  # `--device cuda` on a machine without one fails here
    check_device_settings(base, resolved_device)  # amp=fp16 on a CPU
    resolved = str(resolved_device)
    device = resolved if resolved == base.device else f"{resolved} ({base.device})"
    check_layout(_layout_config(spec, base))  # a missing, empty or unpaired --data folder
    check_space_options(spec.sampler, spec.sampler_options, spec.space)
    sampler = make_sampler(spec.sampler, spec.seed, spec.sampler_options)
    pruner = make_pruner(spec.pruner, total_epochs(base), spec.pruner_options)
    return RunPlan(spec, overrides, base, device, sampler, pruner, threads)


def _layout_config(spec: StudySpec, base: TrainConfig) -> TrainConfig:
    """`base` with searched clip lengths at their smallest: the config a data set must hold at least."""
    shortest = {}
    for name in ("train_vi_len", "val_vi_len"):
        dist = spec.space.get(name)
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            shortest[name] = min(int(c) for c in dist.choices if c is not None)  # int fields: coerced ints
        elif isinstance(dist, optuna.distributions.IntDistribution):
            shortest[name] = dist.low
    return base.replace(**shortest) if shortest else base


def _confirm_options(spec: StudySpec, opts: RunOptions) -> None:
    """Apply --confirm-top, --confirm-seeds, --confirm-estimate and --no-confirm to the spec's [confirm]."""
    flags = (
        ("--confirm-top", opts.confirm_top),
        ("--confirm-seeds", opts.confirm_seeds),
        ("--confirm-estimate", opts.confirm_estimate),
    )
    asked = [flag for flag, value in flags if value is not None]
    if opts.no_confirm and asked:
        raise SpecError(f"{' and '.join(asked)} asks for confirmation and --no-confirm turns it off: drop one")
    if opts.no_confirm:
        spec.confirm = replace(spec.confirm, enabled=False)
    elif asked:
        top, seeds, estimate = opts.confirm_top, opts.confirm_seeds, opts.confirm_estimate
        spec.confirm = replace(
            spec.confirm,
            enabled=True,
            top_k=spec.confirm.top_k if top is None else top,
            seeds=spec.confirm.seeds if seeds is None else seeds,
            estimate=spec.confirm.estimate if estimate is None else estimate,
        ).check(" and ".join(asked))


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
    name_metric(study)  # the dashboard's value axis says "val PSNR (dB)" (an older study gets it on its next run)
    check_compatible(study, spec)
    return study


INITIALISED = "initialised"  # study user attr, written last by `join`: the spec and warm start are all recorded


def join(study: optuna.Study, spec: StudySpec, epochs: int | None = None) -> int:
    """Join the study under its lock; returns this worker's join index (0 for the first worker).

    The first worker in records the spec (with its sampler, pruner and the trials' `epochs`) and enqueues the
    warm-start configs; a later worker must run the same sampler, pruner and epochs. The index derives each
    worker's sampler seed (the same TPE seed on every worker repeats trials).

    Raises:
        SpecError: this worker's sampler, pruner or epochs differ from those the study recorded.
    """
    with study_lock(study):
        attrs = study.user_attrs
        if "space" in attrs:
            _check_same_run(study.study_name, attrs, spec, epochs)
        if not attrs.get(INITIALISED):
            # The first worker in, or one after a worker stopped half-way through this (SIGINT, kill -9, a lost
            # database): every step is idempotent (an attr already recorded is kept, an enqueued config is not
            # queued twice), and the marker is written last, so the next worker to join completes a partial one.
            init = {**spec_summary(spec), "sampler": spec.sampler, "pruner": spec.pruner, "seed": spec.seed}
            if epochs is not None:
                init["epochs"] = epochs
            for k, v in init.items():
                if k not in attrs:
                    study.set_user_attr(k, v)
            for params in spec.enqueue:
                study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)
            study.set_user_attr(INITIALISED, True)
        index = int(attrs.get("workers_joined", 0))
        study.set_user_attr("workers_joined", index + 1)
    return index


def _sharing_cores(threads: int | None, hook: Callable[[optuna.Trial], None]) -> Callable[[optuna.Trial], None]:
    """`hook`, after setting this worker's torch threads for the trial (`model.device.share_cores`)."""

    def started(trial: optuna.Trial) -> None:
        share_cores(threads)
        hook(trial)

    return started


def _ending(
    checkpoints: TrialCheckpoints, hook: Callable[[optuna.Study, FrozenTrial], None]
) -> Callable[[optuna.Study, FrozenTrial], None]:
    """`hook`, after the ended trial's checkpoint is kept as its weights or removed (`TrialCheckpoints.ended`)."""

    def ended(study: optuna.Study, trial: FrozenTrial) -> None:
        checkpoints.ended(study, trial)
        hook(study, trial)

    return ended


def _check_same_run(name: str, attrs: dict[str, Any], spec: StudySpec, epochs: int | None) -> None:
    """A worker joining a study runs what the study recorded: one study, one sampler, pruner and trial length."""
    asked = {"sampler": (spec.sampler, "--sampler"), "pruner": (spec.pruner, "--pruner"), "epochs": (epochs, "--set")}
    for key, (value, flag) in asked.items():
        recorded = attrs.get(key)
        if recorded is None or value is None or recorded == value:
            continue
        use = f"--set epochs={recorded}" if key == "epochs" else f"{flag} {recorded}"
        raise SpecError(
            f"study {name!r} runs {key} {recorded} (recorded by its first worker), this worker asks for {value}: "
            f"join it with {use}, or start a new study with --study-name {name}-2"
        )


def run_study(opts: RunOptions) -> RunSummary:
    """Run this worker's share of the study; returns when the global budget is spent or on timeout."""
    started = time.perf_counter()
    plan = prepare(opts)
    spec = plan.spec
    url = resolve_url(opts.storage)
    study = open_study(plan, open_storage(url))
    seed = worker_seed(spec.seed, str(join(study, spec, plan.base.epochs)))
    if seed != spec.seed:  # a later worker: the sampler gets its own seed (Optuna lets a study's sampler change)
        study.sampler = make_sampler(spec.sampler, seed, spec.sampler_options)
    reaped = reap_stale(study)
    printer = TrialPrinter(study, quiet=opts.quiet, budget=opts.n_trials)
    printer.say(
        f"study {spec.name} | data {plan.base.data or 'synthetic (built-in)'} | profile {spec.profile or 'none'} | "
        f"storage {mask_url(url)} | sampler {spec.sampler} (seed {seed}) | "
        f"pruner {_with_options(spec.pruner, spec.pruner_options)} | device {plan.device} | "
        f"budget {plural(opts.n_trials, 'trial')}" + (f" | reaped {reaped} stale" if reaped else "")
    )

    def after_train(trial: optuna.Trial, config: TrainConfig, data: DataSet, result: TrainResult) -> None:
        upload_trial_artifacts(url, trial, config, data, result)

    checkpoints = TrialCheckpoints(study_checkpoints(url, spec.name), spec.keep_weights)
    objective = Objective(
        spec, plan.overrides, epoch_hook_factory=printer.epoch_hook, after_train=after_train, checkpoints=checkpoints
    )
    log.debug("worker %s", this_worker())
    result = run_worker(
        study,
        objective,
        opts.n_trials,
        timeout=opts.timeout,
        on_trial_start=_sharing_cores(plan.threads, printer.trial_started),
        on_trial_end=_ending(checkpoints, printer.trial_finished),
        distributions=spec.space,
    )
    checkpoints.sweep(study)
    summary = _summary(study, result, time.perf_counter() - started)
    printer.summary(summary.best_value, summary.best_number, summary.best_params, result, summary.seconds)
    if spec.confirm.enabled and result.stopped == "budget":
        left = None if opts.timeout is None else opts.timeout - (time.perf_counter() - started)
        summary.confirm_worker, summary.confirmation = run_confirmation(
            study, url, spec.confirm, spec.space_json(), plan.overrides, opts.quiet, left
        )
    return summary


def run_confirmation(
    study: optuna.Study,
    url: str,
    settings: ConfirmSettings,
    space: str,
    overrides: dict[str, Any],
    quiet: bool = False,
    timeout: float | None = None,
) -> tuple[WorkerResult, confirm.Confirmation]:
    """Confirm the study's best candidates over seeds, sharing the runs with every other worker (`hpo.confirm`).

    Returns when the race is decided and the winner estimated (or on `timeout`); `overrides` are this worker's run
    settings.
    """
    companion = confirm.start(study, open_storage(url), settings, space)
    name_metric(companion)  # the dashboard labels the runs' values as it does the search's
    plan = companion.user_attrs[confirm.PLAN_ATTR]
    runs = TrialPrinter(companion, quiet=quiet, label="confirm run", show_best=False)
    racing = f"paired t-test, alpha {plan['alpha']}" if plan["alpha"] else "none"
    runs.say(
        f"confirming the best {plural(len(plan['candidates']), 'config')} "
        f"over up to {plural(len(plan['seeds']), 'seed')} (seeds {plan['seeds']}; racing: {racing})"
        + (f", then the winner on seeds {plan['estimate_seeds']} for its value" if plan.get("estimate_seeds") else "")
    )
    # Runs resume like search trials; none keeps its weights (a run re-trains a search trial, whose are kept).
    checkpoints = TrialCheckpoints(study_checkpoints(url, companion.study_name), keep=0)
    objective = ConfirmObjective(
        plan["candidates"], overrides, epoch_hook_factory=runs.epoch_hook, checkpoints=checkpoints
    )
    result = run_worker(
        companion,
        objective,
        1,
        timeout=max(timeout, 1e-3) if timeout is not None else None,
        on_trial_end=_ending(checkpoints, runs.trial_finished),
        source=confirm.source(companion),
    )
    checkpoints.sweep(companion)
    outcome = confirm.summarize(companion)
    for line in confirmation_lines(outcome, raw_best(study)):
        runs.say(line)
    return result, outcome


def _summary(study: optuna.Study, result: WorkerResult, seconds: float) -> RunSummary:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return RunSummary(study.study_name, result, None, {}, None, seconds)
    best = study.best_trial
    return RunSummary(study.study_name, result, best.value, dict(best.params), best.number, seconds)


def _with_options(name: str, options: dict[str, Any]) -> str:
    """'rungs (at_epochs [1, 2], reduction_factors [2, 16])': a pruner as the spec configured it."""
    return f"{name} ({', '.join(f'{k} {v}' for k, v in options.items())})" if options else name
