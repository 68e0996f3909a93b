"""The objective on the smoke spec: per-epoch reports, and pruning through its one hook."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.objective import Objective
from hpo.spec import load_spec

SMOKE = Path(__file__).resolve().parent.parent / "studies" / "smoke.toml"


class _PruneFrom(optuna.pruners.BasePruner):
    """Prunes every trial once it has reported step `step` (the objective's step = epochs trained)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return (trial.last_step or 0) >= self.step


@pytest.mark.parametrize(
    ("prune_from", "state", "steps"), [(1, TrialState.PRUNED, [1]), (2, TrialState.COMPLETE, [1, 2])]
)
def test_a_rung_at_the_last_epoch_does_not_prune_a_finished_training(
    prune_from: int, state: TrialState, steps: list[int]
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = Objective(load_spec(str(SMOKE)))  # 2 epochs a trial
    study = optuna.create_study(direction="maximize", pruner=_PruneFrom(prune_from))
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == state
    assert sorted(trial.intermediate_values) == steps
    assert len(trial.user_attrs["val_psnr"]) == len(steps)
    if state == TrialState.COMPLETE:
        assert trial.value == pytest.approx(trial.intermediate_values[2])


def test_a_trial_records_its_config_as_a_json_value_and_the_study_its_space(smoke_study) -> None:
    """Structured attrs are JSON values, which the dashboard shows as such (strings would show as one line)."""
    from hpo.results import trial_config

    study = smoke_study.load()
    trial = study.best_trial
    assert isinstance(trial.user_attrs["config"], dict) and isinstance(study.user_attrs["space"], dict)
    assert trial_config(study, trial).to_dict() == trial.user_attrs["config"]
