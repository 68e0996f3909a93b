"""The objective: spec + trial -> TrainConfig -> `train()`; per-epoch PSNR reported, pruning through the hook."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from hpo.errors import StudyError
from hpo.reaper import WORKER_ATTR, this_worker
from hpo.space import suggest
from hpo.spec import StudySpec
from hpo.trial_checkpoints import TrialCheckpoints
from model.config import TrainConfig, from_dict
from model.data import DataCache
from model.dataset import DataSet
from model.train import EpochHook, TrainResult, total_epochs, train

# Per-epoch curves kept as user attrs: small lists of floats, since large attrs slow the dashboard
# (docs/ARCHITECTURE.md, "Outputs").
CURVES = ("train_loss", "beta", "tfr", "val_psnr")


class Objective:
    """Callable objective for `run_worker`: returns the final validation PSNR (maximised).

    Args:
        spec: the study spec (fixed fields and search space).
        overrides: CLI `--set`/`--data`/`--device` values applied on top of every trial's config.
        epoch_hook_factory: optional, makes a per-trial progress hook `(trial, total_epochs) -> EpochHook`.
        after_train: optional, called with (trial, config, data, result) while the trial is still RUNNING
            (artifacts attach only to running trials, docs/ARCHITECTURE.md, "Optuna facts the code relies on").
        checkpoints: optional, where each trial keeps its last finished epoch, so that a retry resumes it
            (docs/ARCHITECTURE.md, "Trial checkpoints"); the worker calls its `ended` after each tell.
    """

    def __init__(
        self,
        spec: StudySpec,
        overrides: dict[str, Any] | None = None,
        epoch_hook_factory: Callable[[optuna.Trial, int], EpochHook] | None = None,
        after_train: Callable[[optuna.Trial, TrainConfig, DataSet, TrainResult], None] | None = None,
        checkpoints: TrialCheckpoints | None = None,
    ) -> None:
        self.spec, self.overrides = spec, dict(overrides or {})
        self.epoch_hook_factory, self.after_train = epoch_hook_factory, after_train
        self.checkpoints = checkpoints
        self.data = DataCache()

    def config_for(self, trial: optuna.Trial) -> TrainConfig:
        params = {name: suggest(trial, name, dist) for name, dist in self.spec.space.items()}
        return self.spec.trial_config(params, self.overrides)

    def __call__(self, trial: optuna.Trial) -> float:
        config = self.config_for(trial)
        data = self.data.get(config)
        started = time.perf_counter()
        total = total_epochs(config)
        progress = self.epoch_hook_factory(trial, total) if self.epoch_hook_factory else None
        curves: dict[str, list[float]] = {k: [] for k in CURVES}
        if WORKER_ATTR not in trial.user_attrs:  # the worker's claim records it; other callers (study.optimize) do not
            trial.set_user_attr(WORKER_ATTR, this_worker())
        # The complete config makes `hpo export` exact, whatever --set/--data the worker ran with. A JSON value,
        # not a string, so the dashboard shows it readably (older studies hold a string: `spec.json_attr`).
        trial.set_user_attr("config", dict(sorted(config.to_dict().items())))

        def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:
            for k in CURVES:
                curves[k].append(round(float(metrics[k]), 6))
                trial.set_user_attr(k, curves[k])
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
            if progress is not None:
                progress(epoch, metrics)
            # step = epochs trained so far (1-based): the pruners' resource (Hyperband min/max_resource)
            trial.report(float(metrics["val_psnr"]), epoch + 1)
            # After the last epoch there is nothing left to save: a rung that falls there (Hyperband's rf 3 has
            # one at epoch 9, so `--set epochs=9` puts it at the end) would throw away a finished training.
            if epoch + 1 < total and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} with val PSNR {metrics['val_psnr']:.2f} dB")

        last, resume = self.checkpoints.start(trial, config) if self.checkpoints is not None else (None, None)
        if resume is not None:
            _replay(trial, resume["metrics"], curves, total)
            resumed = getattr(progress, "resumed", None)  # the bar starts at the resumed epoch
            if resumed is not None:
                resumed(len(resume["metrics"]))
        on_step = getattr(progress, "on_step", None)  # the bar moves within an epoch (no effect on the run)
        result = train(config, data, on_epoch=on_epoch, resume=resume, last=last, on_step=on_step)
        trial.set_user_attr("device", result.device)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        if self.after_train is not None:
            self.after_train(trial, config, data, result)
        return float(result.val_psnr)


def _replay(trial: optuna.Trial, history: list[dict[str, Any]], curves: dict[str, list[float]], total: int) -> None:
    """A resumed trial's skipped epochs, from its checkpoint: their values reported again and their curves
    filled, so pruners, plots and reports see one whole curve (docs/ARCHITECTURE.md, "Trial checkpoints")."""
    for metrics in history:
        for k in CURVES:
            curves[k].append(round(float(metrics[k]), 6))
        trial.report(float(metrics["val_psnr"]), int(metrics["epoch"]) + 1)
    for k in CURVES:
        trial.set_user_attr(k, curves[k])
    # The dead worker may have died between its checkpoint and this check: make it now.
    done = len(history)
    if done < total and trial.should_prune():
        raise optuna.TrialPruned(f"pruned after epoch {done} (resumed) with val PSNR {curves['val_psnr'][-1]:.2f} dB")


class ConfirmObjective(Objective):
    """A confirmation run (`hpo.confirm`): a candidate's complete config trained with the run's seed.

    The config is the one the candidate's search trial trained (its `config` attr, which every trial `hpo run`
    made records) with this worker's run settings (`--set`, `--data`, `--device`) over it, so the runs differ
    from the search draw only in the seed.
    Its study's pruner never prunes: candidates are raced over seeds instead. Runs resume from checkpoints like
    search trials (a run's retries carry its params, so they are the same run); `hpo.run` keeps no run's weights.
    """

    def __init__(
        self,
        candidates: list[dict[str, Any]],
        overrides: dict[str, Any] | None = None,
        epoch_hook_factory: Callable[[optuna.Trial, int], EpochHook] | None = None,
        checkpoints: TrialCheckpoints | None = None,
    ) -> None:
        for c in candidates:
            if not c.get("config"):
                raise StudyError(
                    f"trial {c['trial']} recorded no config (not made by `hpo run`): it cannot be retrained"
                )
        super().__init__(StudySpec(name="", path=Path()), overrides, epoch_hook_factory, checkpoints=checkpoints)
        self.candidates = candidates

    def config_for(self, trial: optuna.Trial) -> TrainConfig:
        candidate = self.candidates[int(trial.params["candidate"])]
        return from_dict({**candidate["config"], **self.overrides, "seed": int(trial.params["seed"])})
