"""scikit-optimize's Gaussian-process optimizer as an Optuna sampler (docs/ARCHITECTURE.md, "Samplers and pruners").

optuna-integration 5 no longer ships a `SkoptSampler`, so this module is one: a `BaseSampler` whose relative
search space (the intersection of the finished trials' distributions) is searched by `skopt.Optimizer` with a
GP base estimator. Because it is an ordinary Optuna sampler, storage, pruning, status, export and the report
never ask which optimizer ran.

The sampler keeps no optimizer between calls: every `sample_relative` rebuilds the `skopt.Optimizer` from the
trials in the storage, so any number of processes (or a restarted worker) share one state, the study. To bound
that refit, at most `max_fit_trials` observations are used (the best half and the most recent rest).

What the GP is told (skopt minimises, so values are negated when the study maximises):

- COMPLETE trials: their value (non-finite values are skipped).
- PRUNED trials (`consider_pruned_trials`, default on): their last intermediate value, a pessimistic estimate
  of what the trial would have reached; a pruned trial that reported nothing is skipped.
- RUNNING trials of other workers (`constant_liar`, default on): the worst observed value at their params, so
  parallel workers do not propose the same point while a trial is in flight.
- FAIL trials whose training diverged (`fail_reason` "training diverged ..."): the worst observed value too. A
  diverged config is a result about the config, and a GP never told of it proposes the same region again and
  again (seen here: ten diverging trials in a row, which stopped the worker). Other failures (an interrupted
  worker, a broken file) say nothing about the params and are skipped.

Until `n_initial_points` trials are observed, and for parameters outside the relative space, the seeded
independent sampler (`RandomSampler(seed)`) decides. skopt itself replaces a proposal that repeats a point it
was told (evaluated or in flight) by another candidate or a random point.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState
from skopt import Optimizer
from skopt.space import Categorical, Dimension, Integer, Real
from skopt.utils import cook_estimator
from threadpoolctl import threadpool_limits

from model.errors import DIVERGED

log = logging.getLogger(__name__)

ACQ_FUNCS = ("EI", "PI", "LCB", "gp_hedge")


@dataclass(frozen=True)
class _Observations:
    xs: list[list[Any]]  # points in skopt's dimension values
    ys: list[float]  # values to minimise
    running: list[list[Any]]  # points of other workers' RUNNING trials
    diverged: list[list[Any]] = field(default_factory=list)  # points whose training diverged


class SkoptSampler(BaseSampler):
    """Bayesian optimisation with scikit-optimize's GP, stateless across processes.

    Args:
        seed: seeds the independent sampler and the per-call `random_state` of `skopt.Optimizer`; one worker
            with the same seed reproduces the same sequence.
        n_initial_points: observed trials before the GP is used (earlier trials are sampled at random).
        acq_func: skopt acquisition function, one of EI, PI, LCB, gp_hedge. gp_hedge's portfolio gains do not
            survive the per-call rebuild, so it picks one of the three at random each call.
        max_fit_trials: most observations the GP is fitted on.
        n_points: random points skopt scores when optimising the acquisition function.
        n_restarts_optimizer: L-BFGS starts of the acquisition optimisation and of the GP kernel fit.
        consider_pruned_trials: tell pruned trials' last intermediate value (else skip them).
        constant_liar: tell other workers' RUNNING trials as the worst observed value.
        independent_sampler: samples parameters outside the relative space (default `RandomSampler(seed)`).

    Raises:
        ValueError: an option is out of range or `acq_func` is unknown.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        n_initial_points: int = 10,
        acq_func: str = "EI",
        max_fit_trials: int = 100,
        n_points: int = 1000,
        n_restarts_optimizer: int = 2,
        consider_pruned_trials: bool = True,
        constant_liar: bool = True,
        independent_sampler: BaseSampler | None = None,
    ) -> None:
        if acq_func not in ACQ_FUNCS:
            raise ValueError(f"acq_func must be one of {', '.join(ACQ_FUNCS)}, got {acq_func!r}")
        if n_initial_points < 1:
            raise ValueError(f"n_initial_points must be >= 1, got {n_initial_points}")
        if max_fit_trials < 2:
            raise ValueError(f"max_fit_trials must be >= 2, got {max_fit_trials}")
        if n_points < 1 or n_restarts_optimizer < 1:
            raise ValueError("n_points and n_restarts_optimizer must be >= 1")
        self._n_initial_points = n_initial_points
        self._acq_func = acq_func
        self._max_fit_trials = max_fit_trials
        self._n_points = n_points
        self._n_starts = n_restarts_optimizer
        self._consider_pruned = consider_pruned_trials
        self._constant_liar = constant_liar
        self._rng = np.random.RandomState(seed)
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)
        self._search_space = IntersectionSearchSpace(include_pruned=consider_pruned_trials)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._independent_sampler.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        self._raise_error_if_multi_objective(study)
        return {name: d for name, d in self._search_space.calculate(study).items() if not d.single()}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        names = sorted(search_space)
        dists = [search_space[n] for n in names]
        obs = self._observations(study, trial, names, dists)
        if len(obs.ys) < self._n_initial_points:
            return {}
        xs, ys = self._cap(obs.xs, obs.ys)
        worse = obs.running + obs.diverged
        if worse:
            worst = max(obs.ys)
            xs, ys = xs + worse, ys + [worst] * len(worse)
        try:
            point = self._ask(dists, xs, ys)
        except (ValueError, np.linalg.LinAlgError) as exc:  # a degenerate fit must not stop the study
            log.warning("trial %d: skopt fit failed (%s); sampling it at random", trial.number, exc)
            return {}
        return {n: _from_skopt(d, v) for n, d, v in zip(names, dists, point, strict=True)}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._independent_sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._independent_sampler.after_trial(study, trial, state, values)

    def _observations(
        self, study: Study, trial: FrozenTrial, names: list[str], dists: list[BaseDistribution]
    ) -> _Observations:
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        xs: list[list[Any]] = []
        ys: list[float] = []
        running: list[list[Any]] = []
        diverged: list[list[Any]] = []
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number or not _has_params(t, names, dists):
                continue
            if t.state == TrialState.COMPLETE:
                value = t.value
            elif t.state == TrialState.PRUNED and self._consider_pruned and t.intermediate_values:
                value = t.intermediate_values[max(t.intermediate_values)]
            elif t.state == TrialState.RUNNING and self._constant_liar:
                running.append(_point(t, names, dists))
                continue
            elif t.state == TrialState.FAIL and str(t.user_attrs.get("fail_reason", "")).startswith(DIVERGED):
                diverged.append(_point(t, names, dists))
                continue
            else:
                continue
            if value is None or not math.isfinite(value):
                continue
            xs.append(_point(t, names, dists))
            ys.append(sign * float(value))
        return _Observations(xs, ys, running, diverged)

    def _cap(self, xs: list[list[Any]], ys: list[float]) -> tuple[list[list[Any]], list[float]]:
        # Keep the best half (where the optimum is) and the most recent rest (where the search is now).
        if len(ys) <= self._max_fit_trials:
            return xs, ys
        n_best = self._max_fit_trials // 2
        best = set(sorted(range(len(ys)), key=lambda i: ys[i])[:n_best])
        recent = [i for i in reversed(range(len(ys))) if i not in best][: self._max_fit_trials - n_best]
        keep = sorted(best | set(recent))
        return [xs[i] for i in keep], [ys[i] for i in keep]

    def _ask(self, dists: list[BaseDistribution], xs: list[list[Any]], ys: list[float]) -> list[Any]:
        dims = [_dimension(d) for d in dists]
        random_state = int(self._rng.randint(2**31 - 1))
        # skopt's own GP, with the kernel fit's restarts bounded like the acquisition's (skopt fixes them at 2).
        gp = cook_estimator("GP", space=dims, random_state=random_state, n_restarts_optimizer=self._n_starts - 1)
        opt = Optimizer(
            dims,
            base_estimator=gp,
            acq_func=self._acq_func,
            n_initial_points=0,  # the initial phase is ours (seeded RandomSampler), not skopt's
            random_state=random_state,
            acq_optimizer_kwargs={"n_points": self._n_points, "n_restarts_optimizer": self._n_starts, "n_jobs": 1},
        )
        # One BLAS thread: the matrices are tiny, and threaded OpenBLAS made scipy's L-BFGS-B far slower on a
        # busy 2-core machine (bench/RESULTS.md, "Measurements behind code choices").
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            # skopt swaps a repeated proposal for a random point and says so; kernel-bound warnings are expected.
            warnings.filterwarnings("ignore", message="The objective has been evaluated at")
            warnings.filterwarnings("ignore", module="sklearn")
            opt.tell(xs, ys)
            point = opt.ask()
        return list(point)


def _has_params(t: FrozenTrial, names: list[str], dists: list[BaseDistribution]) -> bool:
    return all(t.distributions.get(n) == d for n, d in zip(names, dists, strict=True))


def _point(t: FrozenTrial, names: list[str], dists: list[BaseDistribution]) -> list[Any]:
    return [_to_skopt(d, t.params[n]) for n, d in zip(names, dists, strict=True)]


def _grid_size(d: FloatDistribution | IntDistribution) -> int:
    assert d.step is not None
    return int(round((d.high - d.low) / d.step))


def _dimension(d: BaseDistribution) -> Dimension:
    """The skopt dimension of an Optuna distribution; stepped ones search the index of their grid."""
    if isinstance(d, CategoricalDistribution):
        return Categorical(list(range(len(d.choices))))  # indices: choices may be None, bools, mixed types
    if isinstance(d, FloatDistribution):
        if d.log:
            return Real(d.low, d.high, prior="log-uniform")
        if d.step is not None:
            return Integer(0, _grid_size(d))
        return Real(d.low, d.high)
    if isinstance(d, IntDistribution):
        if d.log:
            return Integer(d.low, d.high, prior="log-uniform")
        return Integer(0, _grid_size(d))
    raise TypeError(f"unsupported distribution {d!r}")


def _to_skopt(d: BaseDistribution, value: Any) -> Any:
    if isinstance(d, CategoricalDistribution):
        return int(d.to_internal_repr(value))
    if isinstance(d, FloatDistribution):
        if d.step is not None and not d.log:
            return min(max(int(round((value - d.low) / d.step)), 0), _grid_size(d))
        return min(max(float(value), d.low), d.high)
    if isinstance(d, IntDistribution):
        if d.log:
            return int(value)
        return min(max(int(round((value - d.low) / d.step)), 0), _grid_size(d))
    raise TypeError(f"unsupported distribution {d!r}")


def _from_skopt(d: BaseDistribution, v: Any) -> Any:
    """An Optuna value inside `d` (right type, on the step grid, within bounds) from a skopt value."""
    if isinstance(d, CategoricalDistribution):
        return d.choices[int(v)]
    if isinstance(d, FloatDistribution):
        if d.step is not None and not d.log:
            i = min(max(int(round(v)), 0), _grid_size(d))
            return float(min(d.low + i * d.step, d.high))
        return float(min(max(float(v), d.low), d.high))
    if isinstance(d, IntDistribution):
        if d.log:
            return int(min(max(int(round(v)), d.low), d.high))
        i = min(max(int(round(v)), 0), _grid_size(d))
        return int(d.low + i * d.step)
    raise TypeError(f"unsupported distribution {d!r}")
