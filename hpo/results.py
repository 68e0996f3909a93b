"""Reading results back from a study: status of every study, the best trial, and its exported config."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import StudyError
from hpo.outputs import write_output
from hpo.reaper import worker_of
from model.config import TrainConfig, from_dict, to_toml


@dataclass
class StudyStatus:
    name: str
    direction: str
    counts: dict[str, int]  # trial state name -> count
    best_value: float | None
    best_number: int | None
    running: list[tuple[int, str]]  # (trial number, "host:pid") of RUNNING trials (its `worker` attr)


def study_names(storage: Any) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def load(storage: Any, name: str) -> optuna.Study:
    """Load an existing study; an unknown name is a StudyError listing the known ones."""
    names = study_names(storage)
    if name not in names:
        known = ", ".join(names) if names else "none yet (run `hpo run` first)"
        raise StudyError(f"unknown study {name!r} in this storage: known studies: {known}")
    return optuna.load_study(study_name=name, storage=storage)


def status(study: optuna.Study) -> StudyStatus:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = (max if maximize else min)(complete, key=lambda t: t.value, default=None)  # type: ignore[arg-type,return-value]
    running = [
        (t.number, ":".join("?" if v is None else str(v) for v in worker_of(t)))
        for t in trials
        if t.state == TrialState.RUNNING
    ]
    return StudyStatus(
        study.study_name,
        "maximize" if maximize else "minimize",
        {s.name: counts.get(s.name, 0) for s in TrialState},
        best.value if best else None,
        best.number if best else None,
        running,
    )


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best COMPLETE trial; a study without one is a StudyError."""
    try:
        return study.best_trial
    except ValueError:
        raise StudyError(
            f"study {study.study_name!r} has no complete trial yet: run more trials "
            f"(`hpo run --study {study.study_name}`) or wait for a running one"
        ) from None


def trial_config(study: optuna.Study, trial: FrozenTrial) -> TrainConfig:
    """The complete TrainConfig a trial trained with (stored on the trial by the objective)."""
    if "config" in trial.user_attrs:
        return from_dict(json.loads(trial.user_attrs["config"]))
    fixed = json.loads(study.user_attrs.get("fixed", "{}"))
    return from_dict({**fixed, **trial.params})


def export_toml(study: optuna.Study, storage_label: str) -> str:
    """The best trial's complete config as TOML with a provenance header (loadable by `hpo train`)."""
    trial = best_trial(study)
    config = trial_config(study, trial)
    header = (
        f"vp-hpo export: study {study.study_name}, trial {trial.number}, val PSNR {trial.value:.4f} dB\n"
        f"storage {storage_label}\nreproduce: hpo train THIS_FILE"
    )
    return to_toml(config, header)


def write_export(study: optuna.Study, storage_label: str, path: str) -> None:
    """Write `export_toml` to `path` atomically (StudyError, one line, when it cannot be written)."""
    write_output(path, export_toml(study, storage_label), "path")


def best_dict(study: optuna.Study) -> dict[str, Any]:
    trial = best_trial(study)
    return {
        "study": study.study_name,
        "trial": trial.number,
        "value": trial.value,
        "params": trial.params,
        "config": trial_config(study, trial).to_dict(),
        "duration_s": trial.duration.total_seconds() if trial.duration else None,
    }
