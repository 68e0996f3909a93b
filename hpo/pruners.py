"""Pruners by name: a spec's `[pruner]` name and options become an Optuna pruner.

The resource is the epoch: the objective reports val PSNR once per epoch at step = epochs trained so far
(1, 2, ...), so `min_resource`/`max_resource` are numbers of epochs.

See docs/ARCHITECTURE.md, "Samplers and pruners".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import optuna

from hpo.errors import SpecError
from hpo.samplers import check_options

__all__ = ["PRUNERS", "make_pruner"]

log = logging.getLogger(__name__)

PRUNERS = ("hyperband", "rungs", "median", "none")

_OPTIONS: dict[str, dict[str, type]] = {
    "hyperband": {"min_resource": int, "reduction_factor": int, "bootstrap_count": int},
    "rungs": {"at_epochs": list, "reduction_factors": list},
    "median": {"n_startup_trials": int, "n_warmup_steps": int, "interval_steps": int, "n_min_trials": int},
    "none": {},
}


def make_pruner(name: str, max_resource: int, options: Mapping[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """The pruner `name` (one of `PRUNERS`) for trials of `max_resource` epochs, with the spec's options.

    Defaults: hyperband has min_resource 1 and reduction_factor 3 (a `min_resource` above the epochs is
    lowered to them, so `--set epochs=1` still runs); median waits for 5 finished trials and never prunes in
    the first fifth of the epochs (the lab report's curves swing early), then prunes below the median.

    Raises:
        SpecError: unknown pruner name, unknown option key, or an option of the wrong type or value.
    """
    if name not in PRUNERS:
        raise SpecError(f"unknown pruner {name!r}: use one of {', '.join(PRUNERS)}")
    if max_resource < 1:
        raise SpecError(f"a study needs at least 1 epoch per trial, got {max_resource}: raise epochs in the spec")
    opts = check_options("pruner", name, options, _OPTIONS[name])
    if name == "hyperband":
        return _hyperband(max_resource, opts)
    if name == "rungs":
        return _rungs(max_resource, opts)
    if name == "median":
        kwargs = {"n_startup_trials": 5, "n_warmup_steps": max_resource // 5} | opts
        if kwargs.get("interval_steps", 1) < 1 or kwargs.get("n_min_trials", 1) < 1:
            raise SpecError("pruner options interval_steps and n_min_trials must be >= 1: fix [pruner.options]")
        return optuna.pruners.MedianPruner(**kwargs)
    return optuna.pruners.NopPruner()


def _hyperband(max_resource: int, opts: dict[str, Any]) -> optuna.pruners.BasePruner:
    min_resource = opts.pop("min_resource", 1)
    reduction_factor = opts.pop("reduction_factor", 3)
    if min_resource < 1:
        raise SpecError(f"pruner option min_resource must be >= 1 epoch, got {min_resource}: fix [pruner.options]")
    if reduction_factor < 2:
        raise SpecError(f"pruner option reduction_factor must be >= 2, got {reduction_factor}: fix [pruner.options]")
    if min_resource > max_resource:
        log.warning(
            "hyperband min_resource %d is above the %d epochs of a trial: using %d",
            min_resource,
            max_resource,
            max_resource,
        )
        min_resource = max_resource
    return optuna.pruners.HyperbandPruner(
        min_resource=min_resource, max_resource=max_resource, reduction_factor=reduction_factor, **opts
    )


def _rungs(max_resource: int, opts: dict[str, Any]) -> optuna.pruners.BasePruner:
    at = opts.get("at_epochs", [1])
    factors = opts.get("reduction_factors", [3] * len(at))
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in [*at, *factors])
    if not ok or len(at) != len(factors) or not at:
        raise SpecError(
            "pruner options at_epochs and reduction_factors must be lists of integers of the same length: "
            "fix [pruner.options]"
        )
    if any(b <= a for a, b in zip(at, at[1:], strict=False)) or at[0] < 1 or min(factors) < 2:
        raise SpecError(
            f"rungs need rising epochs >= 1 and reduction factors >= 2, got at_epochs {at} and reduction_factors "
            f"{factors}: fix [pruner.options]"
        )
    kept = {e: f for e, f in zip(at, factors, strict=True) if e < max_resource}
    if len(kept) < len(at):
        log.warning("rungs at or after the last epoch (%d) never prune: dropped", max_resource)
    return RungPruner(kept)


class RungPruner(optuna.pruners.BasePruner):
    """Successive halving with rungs at given epochs, each with its own reduction factor.

    At a rung at epoch e with factor r, a trial goes on only when its value after epoch e is among the best
    1/r of the values every trial of the study reported after epoch e (its own included); while fewer than r
    have, only the best so far goes on. That is Optuna's SuccessiveHalvingPruner rule, which puts its rungs at
    min_resource * r**k with one r for all of them; this pruner exists because a schedule can need rungs that
    are not so spaced. In the small profile epoch 1 trains with beta = 0 whatever the KL schedule, so a rung
    there ranks trials by lr and tfr alone; a second rung after epoch 2, where beta has moved, sees the schedule
    (bench/RESULTS.md, pruning). The rungs read the reported values (intermediate_values) only.
    """

    def __init__(self, rungs: dict[int, int]) -> None:
        self.rungs = dict(sorted(rungs.items()))

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step not in self.rungs:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and step in t.intermediate_values
        ]
        competing = sorted((sign * v for v in [value, *others] if not math.isnan(v)), reverse=True)
        cut = max(len(competing) // self.rungs[step] - 1, 0)
        return sign * value < competing[cut]
