"""The sampler factory: every name runs a study, seeds reproduce, workers get distinct seeds.

See docs/ARCHITECTURE.md, "Samplers and pruners".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hpo.errors import SpecError
from hpo.samplers import SAMPLERS, make_sampler, worker_seed
from hpo.skopt_sampler import SkoptSampler
from model.errors import UsageError

# Few startup trials so that 6 trials reach each sampler's model, not only its random start.
QUICK = {
    "tpe": {"n_startup_trials": 2},
    "gp": {"n_startup_trials": 2},
    "cmaes": {"n_startup_trials": 1},
    "random": {},
    "qmc": {},
    "skopt": {"n_initial_points": 2},
}
SPACE = {
    "x": FloatDistribution(-2.0, 2.0),
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "n": IntDistribution(1, 8),
    "kind": CategoricalDistribution(["a", "b", "c"]),
}


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    n = trial.suggest_int("n", 1, 8)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    return x**2 + (math.log10(lr) + 3) ** 2 + (n - 3) ** 2 + "abc".index(kind)


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_quick_options_cover_every_sampler() -> None:
    assert set(QUICK) == set(SAMPLERS)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_finishes_a_sqlite_study(name: str, tmp_path: Path) -> None:
    _quiet()
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path}/s.db", study_name=name, sampler=make_sampler(name, 0, QUICK[name])
    )
    study.optimize(_objective, n_trials=6)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    for t in trials:
        for key, dist in SPACE.items():
            assert t.distributions[key] == dist
            assert dist._contains(dist.to_internal_repr(t.params[key])), (key, t.params[key])
        assert isinstance(t.params["n"], int) and t.params["kind"] in ("a", "b", "c")
    assert math.isfinite(study.best_value)


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_reproduces_the_sequence(name: str) -> None:
    _quiet()

    def run(seed: int) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=make_sampler(name, seed, QUICK[name]))
        study.optimize(_objective, n_trials=4)
        return [t.params for t in study.trials]

    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_tpe_defaults_and_overrides() -> None:
    tpe = make_sampler("tpe", 0)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert (tpe._multivariate, tpe._constant_liar, tpe._n_startup_trials) == (True, True, 10)
    assert make_sampler("tpe", 0, {"n_startup_trials": 3, "constant_liar": False})._n_startup_trials == 3


def test_factory_types_and_defaults() -> None:
    assert isinstance(make_sampler("gp", 0), optuna.samplers.GPSampler)
    cma = make_sampler("cmaes", 0)
    assert isinstance(cma, optuna.samplers.CmaEsSampler) and cma._warn_independent_sampling is False
    qmc = make_sampler("qmc", 0)
    assert isinstance(qmc, optuna.samplers.QMCSampler) and qmc._scramble is True
    assert isinstance(make_sampler("random", 0), optuna.samplers.RandomSampler)
    sk = make_sampler("skopt", 0, {"n_initial_points": 4, "acq_func": "gp_hedge"})
    assert isinstance(sk, SkoptSampler) and (sk._n_initial_points, sk._acq_func) == (4, "gp_hedge")


def test_cmaes_samples_categoricals_without_warning(caplog: pytest.LogCaptureFixture) -> None:
    _quiet()
    optuna.logging.enable_propagation()
    try:
        study = optuna.create_study(sampler=make_sampler("cmaes", 0))
        with caplog.at_level("WARNING", logger="optuna"):
            study.optimize(_objective, n_trials=4)
    finally:
        optuna.logging.disable_propagation()
    assert not [r for r in caplog.records if "independent" in r.getMessage()]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4


def test_worker_seed_is_distinct_and_stable() -> None:
    assert worker_seed(42, "0") == 42  # a single worker keeps the study seed
    seeds = [worker_seed(42, str(k)) for k in range(1, 200)]
    assert len(set(seeds)) == len(seeds) and 42 not in seeds
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    assert worker_seed(42, "1") == worker_seed(42, "1") == 636930518  # pinned: the same in every process
    assert worker_seed(43, "1") != worker_seed(42, "1")
    assert worker_seed(None, "3") is None


def test_distinct_worker_seeds_give_distinct_first_trials() -> None:
    _quiet()
    firsts = []
    for key in ("0", "1", "2"):
        study = optuna.create_study(sampler=make_sampler("tpe", worker_seed(42, key)))
        study.optimize(_objective, n_trials=1)
        firsts.append(study.trials[0].params["x"])
    assert len(set(firsts)) == 3


def test_unknown_sampler_names_the_choices() -> None:
    with pytest.raises(SpecError, match=r"unknown sampler 'bogus': use one of tpe, gp, cmaes, random, qmc, skopt"):
        make_sampler("bogus", 0)
    assert issubclass(SpecError, UsageError)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("tpe", {"n_startup": 3}, r"unknown option 'n_startup' for sampler 'tpe': use one of .*n_startup_trials"),
        (
            "random",
            {"seed": 1},
            r"unknown option 'seed' for sampler 'random': it takes none: drop it from \[sampler.options\]",
        ),
        ("skopt", {"acq": "EI"}, r"unknown option 'acq' for sampler 'skopt'"),
        ("tpe", {"n_startup_trials": "ten"}, r"'n_startup_trials' of 'tpe' must be int, got 'ten'"),
        ("gp", {"n_startup_trials": True}, r"must be int, got True"),
        ("qmc", {"scramble": 1}, r"'scramble' of 'qmc' must be bool"),
        ("tpe", {"n_startup_trials": -1}, r"must be >= 0, got -1"),
        ("qmc", {"qmc_type": "bogus"}, r"bad \[sampler.options\] for 'qmc': .*qmc_type='bogus'"),
        ("skopt", {"acq_func": "UCB"}, r"bad \[sampler.options\] for 'skopt': acq_func must be one of EI"),
        ("skopt", {"n_initial_points": 0}, r"n_initial_points must be >= 1"),
    ],
)
def test_bad_options_are_spec_errors(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        make_sampler(name, 0, options)
    assert "\n" not in str(info.value) and "[sampler.options]" in str(info.value)
