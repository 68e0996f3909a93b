"""Samplers by name: one factory turns a spec's `[sampler]` name and options into an Optuna sampler.

Every sampler is seeded; parallel workers get distinct seeds from `worker_seed` (the same TPE seed on every
worker gave identical first trials). scikit-optimize is one more Optuna sampler (`hpo.skopt_sampler`).

See docs/ARCHITECTURE.md, "Samplers and pruners".
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning

from hpo.errors import SpecError
from hpo.optuna_private import contains
from hpo.skopt_sampler import SkoptSampler

__all__ = ["SAMPLERS", "check_options", "check_space_options", "make_sampler", "worker_seed"]

SAMPLERS = ("tpe", "gp", "cmaes", "random", "qmc", "skopt")

# The options a spec may set, with their TOML types (anything else is a SpecError naming the key).
_OPTIONS: dict[str, dict[str, type]] = {
    "tpe": {
        "n_startup_trials": int,
        "n_ei_candidates": int,
        "multivariate": bool,
        "group": bool,
        "constant_liar": bool,
    },
    "gp": {"n_startup_trials": int, "deterministic_objective": bool},
    "cmaes": {
        "n_startup_trials": int,
        "x0": dict,
        "popsize": int,
        "use_separable_cma": bool,
        "with_margin": bool,
        "lr_adapt": bool,
        "consider_pruned_trials": bool,
    },
    "random": {},
    "qmc": {"qmc_type": str, "scramble": bool},
    "skopt": {
        "n_initial_points": int,
        "acq_func": str,
        "max_fit_trials": int,
        "n_points": int,
        "n_restarts_optimizer": int,
        "consider_pruned_trials": bool,
        "constant_liar": bool,
    },
}


def make_sampler(name: str, seed: int | None, options: Mapping[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    """The sampler `name` (one of `SAMPLERS`), seeded, with the spec's options over our defaults.

    Defaults: tpe is multivariate with a constant liar and 10 startup trials; cmaes and gp hand what they do
    not model (categoricals for CMA-ES) to `RandomSampler(seed)` without warning; qmc is a scrambled Sobol
    sequence; skopt is `SkoptSampler` (GP, EI).

    Raises:
        SpecError: unknown sampler name, unknown option key, or an option of the wrong type or value.
    """
    if name not in SAMPLERS:
        raise SpecError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    opts = check_options("sampler", name, options, _OPTIONS[name])
    try:
        with warnings.catch_warnings():
            # qmc and some options are marked experimental; the spec chose them on purpose.
            warnings.simplefilter("ignore", ExperimentalWarning)
            return _FACTORIES[name](seed, opts)
    except (ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())
        raise SpecError(f"bad [sampler.options] for {name!r}: {reason}: fix it in the study spec") from exc


def check_space_options(name: str, options: Mapping[str, Any] | None, space: Mapping[str, BaseDistribution]) -> None:
    """Sampler options that name the search space's fields, checked against it: CMA-ES's `x0`.

    CMA-ES starts from `x0`, which must give every numeric field of the space (it models those, not the
    categoricals) a value inside its range; a gap or a stray key would fail every trial it samples.

    Raises:
        SpecError: naming the key or value and the fix.
    """
    x0 = (options or {}).get("x0")
    if name != "cmaes" or x0 is None:
        return
    numeric = {k: d for k, d in space.items() if not isinstance(d, CategoricalDistribution)}
    where = "[sampler.options] x0 of 'cmaes'"
    stray = sorted(set(x0) - set(numeric))
    if stray:
        raise SpecError(f"{where} sets {stray}, not numeric fields of the search space: give {sorted(numeric)} only")
    missing = sorted(set(numeric) - set(x0))
    if missing:
        raise SpecError(f"{where} lacks {missing}: give a start value for every numeric field of the search space")
    for key, value in x0.items():
        d = numeric[key]
        whole = isinstance(value, int) or not isinstance(d, IntDistribution)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and whole
        if not number:
            kind = "a whole number" if isinstance(d, IntDistribution) else "a number"
            raise SpecError(f"{where}: {key} = {value!r} must be {kind} inside its search space: fix [sampler.options]")
        if not contains(d, value):
            span = f"[{getattr(d, 'low', '?')}, {getattr(d, 'high', '?')}]"
            raise SpecError(f"{where}: {key} = {value!r} is outside its search space {span}: pick a value inside")


def worker_seed(study_seed: int | None, worker_key: str) -> int | None:
    """A distinct, stable sampler seed for one worker of a study.

    Worker "0" (the first, or the only one) uses the study seed itself, so a single worker reproduces a
    study run with `--seed K`; any other key hashes "study_seed/worker_key" (SHA-256, mod 2**31). An
    unseeded study stays unseeded.
    """
    if study_seed is None:
        return None
    if worker_key == "0":
        return study_seed
    digest = hashlib.sha256(f"{study_seed}/{worker_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


def check_options(
    kind: str, name: str, options: Mapping[str, Any] | None, allowed: Mapping[str, type]
) -> dict[str, Any]:
    """`options` as a dict after checking every key is in `allowed` and has its type (an int is a float too).

    Raises:
        SpecError: an unknown key (naming the known ones) or a value of the wrong type.
    """
    opts = dict(options or {})
    for key, value in opts.items():
        if key not in allowed:
            fix = f"use one of {', '.join(sorted(allowed))} in" if allowed else "it takes none: drop it from"
            raise SpecError(f"unknown option {key!r} for {kind} {name!r}: {fix} [{kind}.options]")
        want = allowed[key]
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:  # TOML booleans are not numbers here
            ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if not ok:
            raise SpecError(
                f"{kind} option {key!r} of {name!r} must be {want.__name__}, got {value!r}: fix [{kind}.options]"
            )
        if want is int and value < 0:
            raise SpecError(f"{kind} option {key!r} of {name!r} must be >= 0, got {value}: fix [{kind}.options]")
    return opts


def _tpe(seed: int | None, opts: dict[str, Any]) -> optuna.samplers.BaseSampler:
    kwargs = {"multivariate": True, "constant_liar": True, "n_startup_trials": 10} | opts
    return optuna.samplers.TPESampler(seed=seed, **kwargs)


def _gp(seed: int | None, opts: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, independent_sampler=optuna.samplers.RandomSampler(seed=seed), **opts)


def _cmaes(seed: int | None, opts: dict[str, Any]) -> optuna.samplers.BaseSampler:
    # CMA-ES models numbers only; categoricals go to the independent sampler, which is expected, so no warning.
    return optuna.samplers.CmaEsSampler(
        seed=seed,
        independent_sampler=optuna.samplers.RandomSampler(seed=seed),
        warn_independent_sampling=False,
        **opts,
    )


def _random(seed: int | None, opts: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _qmc(seed: int | None, opts: dict[str, Any]) -> optuna.samplers.BaseSampler:
    kwargs = {"scramble": True} | opts
    return optuna.samplers.QMCSampler(seed=seed, independent_sampler=optuna.samplers.RandomSampler(seed=seed), **kwargs)


def _skopt(seed: int | None, opts: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return SkoptSampler(seed=seed, **opts)


_FACTORIES: dict[str, Callable[[int | None, dict[str, Any]], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "gp": _gp,
    "cmaes": _cmaes,
    "random": _random,
    "qmc": _qmc,
    "skopt": _skopt,
}
