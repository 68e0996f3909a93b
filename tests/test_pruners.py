"""The pruner factory: names, options, and that a clearly worse trial is pruned (ask/tell).

See docs/ARCHITECTURE.md, "Samplers and pruners".
"""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo.errors import SpecError
from hpo.pruners import PRUNERS, RungPruner, make_pruner

EPOCHS = 9


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run(study: optuna.Study, base: float) -> int | None:
    """One trial reporting `base + epoch` for epochs 0..EPOCHS-1, as the objective does; the epoch it was pruned at."""
    trial = study.ask()
    for epoch in range(EPOCHS):
        trial.report(base + epoch, epoch)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return epoch
    study.tell(trial, base + EPOCHS)
    return None


def _study(name: str, options: dict[str, Any] | None = None) -> optuna.Study:
    return optuna.create_study(direction="maximize", study_name="prune", pruner=make_pruner(name, EPOCHS, options))


@pytest.mark.parametrize(("name", "options"), [("hyperband", {}), ("hyperband", {"min_resource": 2}), ("median", {})])
def test_a_clearly_worse_trial_is_pruned(name: str, options: dict[str, Any]) -> None:
    study = _study(name, options)
    assert [_run(study, 20.0 + i / 100) for i in range(8)] == [None] * 8  # the good ones run to the end
    bad = [_run(study, 5.0) for _ in range(6)]
    # Hyperband's most conservative bracket has its only rung at the last epoch, so not every bad trial is pruned.
    pruned = [epoch for epoch in bad if epoch is not None]
    assert len(pruned) >= (3 if name == "hyperband" else 6), bad
    assert min(pruned) == options.get("min_resource", 1 if name == "hyperband" else EPOCHS // 5)
    assert _run(study, 50.0) is None  # a better trial is never pruned


def test_none_never_prunes() -> None:
    study = _study("none")
    assert [_run(study, base) for base in (20.0, 21.0, 22.0, 5.0, 5.0)] == [None] * 5


def test_median_waits_for_its_startup_trials() -> None:
    study = _study("median", {"n_startup_trials": 3, "n_warmup_steps": 0})
    assert [_run(study, base) for base in (20.0, 21.0, 5.0)] == [None] * 3  # fewer than 3 finished: no pruning
    assert _run(study, 5.0) == 0


def test_rungs_keep_the_best_share_at_each_of_their_epochs() -> None:
    study = _study("rungs", {"at_epochs": [1, 2], "reduction_factors": [2, 3]})
    assert isinstance(study.pruner, RungPruner) and study.pruner.rungs == {1: 2, 2: 3}
    # While fewer than 2 (epoch 1) or 3 (epoch 2) trials have reached a rung, only the best so far goes on; then
    # the best half (epoch 1) and the best third (epoch 2). Base 15 is second of 4 after epoch 1 and goes on,
    # but is second of 2 after epoch 2; base 29 is second of 6 there, and the best third of 6 is 2 trials.
    bases = [20.0, 10.0, 12.0, 15.0, 30.0, 25.0, 28.0, 29.0]
    assert [_run(study, base) for base in bases] == [None, 1, 1, 2, None, 2, 2, None]


def _curve(study: optuna.Study, values: list[float]) -> int | None:
    """One trial reporting `values` after epochs 1, 2, ... (asking only before the last, as the objective does)."""
    trial = study.ask()
    for step, value in enumerate(values, start=1):
        trial.report(value, step)
        if step < len(values) and trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, values[-1])
    return None


def test_rungs_see_a_drop_that_the_first_epoch_hides() -> None:
    # What the second rung is for: a KL weight that grows from epoch 2 on drops a trial's PSNR there.
    options = {"at_epochs": [1, 2], "reduction_factors": [2, 2]}
    study = optuna.create_study(direction="maximize", pruner=make_pruner("rungs", 4, options))
    assert _curve(study, [20.0, 22.0, 24.0, 26.0]) is None
    assert _curve(study, [21.0, 15.0, 18.0, 20.0]) == 2  # the better trial after epoch 1
    plain = optuna.create_study(direction="maximize", pruner=make_pruner("hyperband", 4, {"reduction_factor": 6}))
    assert _curve(plain, [20.0, 22.0, 24.0, 26.0]) is None
    assert _curve(plain, [21.0, 15.0, 18.0, 20.0]) is None  # one rung, after epoch 1: it cannot see the drop


def test_rungs_at_or_after_the_last_epoch_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="hpo.pruners"):
        assert make_pruner("rungs", 2, {"at_epochs": [1, 2], "reduction_factors": [2, 2]}).rungs == {1: 2}
    assert "never prune" in caplog.text


def test_factory_passes_defaults_and_options() -> None:
    hb = make_pruner("hyperband", 70, {"min_resource": 2, "reduction_factor": 4})
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    assert (hb._min_resource, hb._max_resource, hb._reduction_factor) == (2, 70, 4)
    assert make_pruner("hyperband", 70)._min_resource == 1
    md = make_pruner("median", 70)
    assert isinstance(md, optuna.pruners.MedianPruner)
    assert (md._n_startup_trials, md._n_warmup_steps) == (5, 14)
    assert make_pruner("median", 70, {"n_warmup_steps": 3})._n_warmup_steps == 3
    assert isinstance(make_pruner("none", 70), optuna.pruners.NopPruner)


def test_min_resource_above_the_epochs_is_lowered(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="hpo.pruners"):
        hb = make_pruner("hyperband", 1, {"min_resource": 2})
    assert (hb._min_resource, hb._max_resource) == (1, 1)
    assert "min_resource 2 is above the 1 epochs" in caplog.text
    study = optuna.create_study(pruner=hb)
    trial = study.ask()
    trial.report(1.0, 0)
    assert trial.should_prune() is False


def test_unknown_pruner_names_the_choices() -> None:
    assert PRUNERS == ("hyperband", "rungs", "median", "none")
    with pytest.raises(SpecError, match=r"unknown pruner 'asha': use one of hyperband, rungs, median, none"):
        make_pruner("asha", 9)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("hyperband", {"min_resources": 2}, r"unknown option 'min_resources' for pruner 'hyperband': use one of "),
        (
            "none",
            {"n_startup_trials": 1},
            r"unknown option 'n_startup_trials' for pruner 'none': it takes none: drop it from \[pruner.options\]",
        ),
        ("median", {"n_warmup_steps": 1.5}, r"'n_warmup_steps' of 'median' must be int, got 1.5"),
        ("median", {"n_warmup_steps": -1}, r"must be >= 0, got -1"),
        ("median", {"interval_steps": 0}, r"interval_steps and n_min_trials must be >= 1"),
        ("hyperband", {"min_resource": 0}, r"min_resource must be >= 1 epoch, got 0"),
        ("hyperband", {"reduction_factor": 1}, r"reduction_factor must be >= 2, got 1"),
        ("rungs", {"at_epochs": 1}, r"'at_epochs' of 'rungs' must be list, got 1"),
        ("rungs", {"at_epochs": [1, 2], "reduction_factors": [3]}, r"lists of integers of the same length"),
        ("rungs", {"at_epochs": [1.5]}, r"lists of integers of the same length"),
        ("rungs", {"at_epochs": [2, 1], "reduction_factors": [3, 3]}, r"rising epochs >= 1 and reduction factors >= 2"),
        ("rungs", {"at_epochs": [0]}, r"rising epochs >= 1"),
        ("rungs", {"at_epochs": [1], "reduction_factors": [1]}, r"reduction factors >= 2, got at_epochs \[1\]"),
    ],
)
def test_bad_options_are_spec_errors(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        make_pruner(name, EPOCHS, options)
    assert "\n" not in str(info.value) and "[pruner.options]" in str(info.value)


def test_zero_epochs_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="at least 1 epoch per trial, got 0"):
        make_pruner("median", 0)
