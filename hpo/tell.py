"""Telling a finished trial until the database takes it, and keeping a result a reaper took for dead.

A worker that lost its database for longer than the heartbeat grace period comes back to find its trial
failed as stale by another worker (and re-queued). `tell_result` keeps the result when the budget still has
room and the retry has not started; otherwise the retry stands in for it (docs/ARCHITECTURE.md, "Retries").
"""

from __future__ import annotations

import logging

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hpo.budget import budget_counts, used_slots
from hpo.errors import StorageError
from hpo.locks import study_lock
from hpo.optuna_private import force_state

__all__ = ["tell_result"]

log = logging.getLogger(__name__)


def tell_result(
    study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None, reason: str, n_trials: int
) -> FrozenTrial:
    # A finished result is told until the database takes it: each attempt retries for the storage's window.
    values = value if state == TrialState.COMPLETE else None
    reason_told = not reason
    while True:
        try:
            if not reason_told:
                trial.set_user_attr("fail_reason", reason)
                reason_told = True
            frozen = study.tell(trial, values, state=state, skip_if_finished=True)
            break
        except UpdateFinishedTrialError:
            # It finished meanwhile (our own tell whose reply was lost, or a reaper that took it for dead):
            # the next tell returns it as it is.
            reason_told = True
        except StorageError as exc:
            if state == TrialState.FAIL:
                raise
            log.warning(
                "trial %d finished (%s, value %s) but the database did not take it: %s; trying again",
                trial.number,
                state.name,
                value,
                exc,
            )
    if frozen.state != state and state != TrialState.FAIL:
        return _recover(study, frozen, state, value, n_trials)
    return frozen


def _recover(study: optuna.Study, lost: FrozenTrial, state: TrialState, value: float | None, n: int) -> FrozenTrial:
    """Keep the result of a trial another worker failed as stale (heartbeats lost in a long outage).

    Under the lock: if the budget has room and no retry of the lost trial has started, add the result as a new
    trial and cancel the queued retry; otherwise the retry (same params) stands in for it.
    """
    with study_lock(study):
        retries = [t for t in study.get_trials(deepcopy=False) if _retry_of(t) == lost.number]
        started = [t for t in retries if t.state != TrialState.WAITING]
        if started or used_slots(budget_counts(study)) >= n:
            log.warning("trial %d (value %s) was reaped and re-run meanwhile: the retry stands", lost.number, value)
            return lost
        attrs = {k: v for k, v in lost.user_attrs.items() if k != "fail_reason"}
        if state == TrialState.PRUNED:
            value = lost.intermediate_values[lost.last_step] if lost.last_step is not None else None
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params=lost.params,
                distributions=lost.distributions,
                user_attrs={**attrs, "recovered_from": lost.number},
                intermediate_values=lost.intermediate_values,
            )
        )
        for t in retries:  # all WAITING
            force_state(study, t, TrialState.FAIL, f"superseded: trial {lost.number} recovered")
        recovered = next(t for t in study.get_trials() if t.user_attrs.get("recovered_from") == lost.number)
    log.warning("trial %d was reaped while it ran; its result is kept as trial %d", lost.number, recovered.number)
    return recovered


def _retry_of(trial: FrozenTrial) -> int | None:
    """The trial this one re-runs: set by our re-queues (user attr) or Optuna's heartbeat retry (system attr)."""
    history = trial.system_attrs.get("retry_history")
    if isinstance(history, list) and history:
        return int(history[-1])
    retry_of = trial.user_attrs.get("retry_of")
    return int(retry_of) if isinstance(retry_of, int) else None
