"""Pruners by name (DESIGN §6): a spec's `[pruner]` name and options become an Optuna pruner.

The resource is the epoch: the objective reports val PSNR once per epoch at step = epochs trained so far
(1, 2, ...), so `min_resource`/`max_resource` are numbers of epochs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import optuna

from hpo.errors import SpecError
from hpo.samplers import check_options

__all__ = ["PRUNERS", "make_pruner"]

log = logging.getLogger(__name__)

PRUNERS = ("hyperband", "median", "none")

_OPTIONS: dict[str, dict[str, type]] = {
    "hyperband": {"min_resource": int, "reduction_factor": int, "bootstrap_count": int},
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
