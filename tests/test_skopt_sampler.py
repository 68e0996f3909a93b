"""SkoptSampler (scikit-optimize's GP as an Optuna sampler): bounds, direction, gain over random, constant liar."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpo.skopt_sampler import SkoptSampler

EVERY_KIND: dict[str, BaseDistribution] = {
    "float": FloatDistribution(-1.0, 2.0),
    "log_float": FloatDistribution(1e-5, 1e-1, log=True),
    "step_float": FloatDistribution(0.1, 1.0, step=0.15),
    "int": IntDistribution(-3, 7),
    "log_int": IntDistribution(1, 1000, log=True),
    "step_int": IntDistribution(2, 20, step=3),
    "strings": CategoricalDistribution(["Cyclical", "Monotonic", "None"]),
    "odd": CategoricalDistribution([None, True, False]),
}


class RecordingSampler(SkoptSampler):
    """Keeps what the GP proposed, to check the GP path itself (not the random start)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proposals: list[dict[str, Any]] = []

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params = super().sample_relative(study, trial, search_space)
        self.proposals.append(params)
        return params


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _in(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return any(value is c or (isinstance(c, str) and value == c) for c in dist.choices)
    if isinstance(dist, IntDistribution) and (not isinstance(value, int) or isinstance(value, bool)):
        return False
    if isinstance(dist, FloatDistribution) and not isinstance(value, float):
        return False
    return dist._contains(dist.to_internal_repr(value))


def test_every_distribution_kind_stays_in_bounds_with_the_right_type() -> None:
    sampler = RecordingSampler(seed=0, n_initial_points=3, n_points=200)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        p = {name: trial._suggest(name, dist) for name, dist in EVERY_KIND.items()}
        return (
            (p["float"] - 1.7) ** 2
            + math.log10(p["log_float"]) ** 2 / 10
            + p["step_float"]
            + abs(p["int"] - 6)
            + abs(math.log10(p["log_int"]) - 1)
            + p["step_int"] / 10
            + ["Cyclical", "Monotonic", "None"].index(p["strings"])
            + (p["odd"] is None)
        )

    study.optimize(objective, n_trials=10)
    gp_proposals = [p for p in sampler.proposals if p]
    assert len(gp_proposals) >= 6  # every trial after the 3 random ones came from the GP
    for params in gp_proposals:
        assert set(params) == set(EVERY_KIND)
        for name, value in params.items():
            assert _in(EVERY_KIND[name], value), (name, value)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert all(_in(EVERY_KIND[n], v) for n, v in t.params.items())


@pytest.mark.parametrize(("direction", "target"), [("maximize", 0.8), ("minimize", 0.0)])
def test_direction_moves_towards_the_optimum(direction: str, target: float) -> None:
    # f peaks at x = 0.8 on [0, 1]; minimising it must go to the far end, x = 0.
    study = optuna.create_study(direction=direction, sampler=SkoptSampler(seed=1, n_initial_points=3, n_points=200))
    study.optimize(lambda t: -((t.suggest_float("x", 0.0, 1.0) - 0.8) ** 2), n_trials=9)
    later = [t.params["x"] for t in study.trials[3:]]
    assert abs(study.best_params["x"] - target) < 0.05
    assert sum(abs(x - target) for x in later) / len(later) < 0.2


def _neg_branin(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 10.0)
    y = trial.suggest_float("y", 0.0, 15.0)
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return -((y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10)  # max -0.398


def test_beats_random_search_on_branin() -> None:
    skopt_best, random_best = [], []
    for seed in range(3):
        for sampler, bests in (
            (SkoptSampler(seed=seed, n_initial_points=5, n_points=300), skopt_best),
            (optuna.samplers.RandomSampler(seed=seed), random_best),
        ):
            study = optuna.create_study(direction="maximize", sampler=sampler)
            study.optimize(_neg_branin, n_trials=15)
            bests.append(study.best_value)
    assert sum(skopt_best) / 3 > sum(random_best) / 3 + 1.0, (skopt_best, random_best)
    assert sum(s > r for s, r in zip(skopt_best, random_best, strict=True)) >= 2, (skopt_best, random_best)


X = {"x": FloatDistribution(0.0, 1.0)}


def _seeded_study(sampler: SkoptSampler) -> optuna.Study:
    # Evaluated everywhere but near the minimum at 0.55, so the GP's next point is sharp: x = 0.55.
    study = optuna.create_study(sampler=sampler)
    xs = [0.0, 0.1, 0.2, 0.3, 0.4, 0.7, 0.8, 0.9, 1.0]
    study.add_trials([create_trial(params={"x": x}, distributions=X, value=(x - 0.55) ** 2) for x in xs])
    return study


@pytest.mark.parametrize("seed", [0, 1])
def test_constant_liar_moves_off_a_running_trial(seed: int) -> None:
    study = _seeded_study(SkoptSampler(seed=seed, n_initial_points=3, n_points=200))
    running = study.ask(X)  # stays RUNNING, as on another worker
    assert abs(running.params["x"] - 0.55) < 0.05
    following = study.ask(X)
    assert abs(following.params["x"] - running.params["x"]) > 0.05


def test_without_the_liar_the_same_point_comes_twice() -> None:
    # The contrast that shows the liar is what moves the second proposal.
    study = _seeded_study(SkoptSampler(seed=0, n_initial_points=3, n_points=200, constant_liar=False))
    first, second = study.ask(X), study.ask(X)
    assert second.params["x"] == pytest.approx(first.params["x"], abs=1e-3)


def test_pruned_trials_count_through_their_last_intermediate_value() -> None:
    def pruned(x: float) -> FrozenTrial:
        return create_trial(
            params={"x": x}, distributions=X, state=TrialState.PRUNED, intermediate_values={0: 9.0, 1: x}
        )

    for consider, gp_used in ((True, True), (False, False)):
        sampler = RecordingSampler(seed=0, n_initial_points=3, n_points=200, consider_pruned_trials=consider)
        study = optuna.create_study(sampler=sampler)
        study.add_trials([pruned(x) for x in (0.1, 0.5, 0.9)])
        study.add_trial(create_trial(params={"x": 0.3}, distributions=X, value=0.3))
        study.ask(X)
        assert bool(sampler.proposals[-1]) is gp_used


def test_a_fresh_sampler_fits_on_the_storage_alone() -> None:
    # Stateless: a new process's sampler uses the GP at once on trials it never saw being made.
    sampler = RecordingSampler(seed=3, n_initial_points=5, n_points=200)
    study = _seeded_study(sampler)
    study.ask(X)
    assert sampler.proposals == [{"x": pytest.approx(0.55, abs=0.05)}]


def test_fit_is_capped_to_the_best_and_the_most_recent() -> None:
    sampler = SkoptSampler(seed=0, max_fit_trials=4)
    ys = [5.0, 0.0, 7.0, 1.0, 9.0, 8.0, 6.0]
    xs = [[i] for i in range(len(ys))]
    kept_x, kept_y = sampler._cap(xs, ys)
    assert kept_x == [[1], [3], [5], [6]] and kept_y == [0.0, 1.0, 8.0, 6.0]
    assert sampler._cap(xs[:4], ys[:4]) == (xs[:4], ys[:4])


def test_a_capped_fit_still_proposes() -> None:
    sampler = RecordingSampler(seed=0, n_initial_points=3, max_fit_trials=4, n_points=200)
    study = _seeded_study(sampler)
    study.ask(X)
    assert sampler.proposals[-1] and 0.0 <= sampler.proposals[-1]["x"] <= 1.0


def test_parameters_outside_the_relative_space_are_sampled_independently() -> None:
    sampler = RecordingSampler(seed=0, n_initial_points=3, n_points=200)
    study = _seeded_study(sampler)
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    extra = trial.suggest_int("extra", 1, 4)  # new: not in any finished trial
    assert sampler.proposals[-1] == {"x": x} and 1 <= extra <= 4


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="acq_func"):
        SkoptSampler(acq_func="UCB")
    with pytest.raises(ValueError, match="max_fit_trials"):
        SkoptSampler(max_fit_trials=1)


def test_multi_objective_is_refused() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=SkoptSampler(seed=0))
    with pytest.raises(ValueError, match="multi-objective"):
        study.ask(X)


@pytest.mark.parametrize(("reason", "moves"), [("training diverged at epoch 2: loss is nan", True),
                                               ("interrupted", False)])  # fmt: skip
def test_a_diverged_trial_is_told_as_the_worst_value_and_the_gp_moves_off_it(reason: str, moves: bool) -> None:
    study = _seeded_study(SkoptSampler(seed=0, n_initial_points=3, n_points=200))
    first = study.ask(X)
    assert abs(first.params["x"] - 0.55) < 0.05
    first.set_user_attr("fail_reason", reason)  # as the worker records a failure
    study.tell(first, state=TrialState.FAIL)
    following = study.ask(X)
    assert (abs(following.params["x"] - first.params["x"]) > 0.05) is moves
