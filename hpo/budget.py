"""Claiming a slot of a study's global budget, atomically across every worker.

`n_trials` is the study's budget across all workers: the study ends with exactly N trials COMPLETE or PRUNED
(FAIL does not count; a retried trial that finishes does). Optuna's `MaxTrialsCallback` checks after a trial
ends, so N workers overshoot by up to N-1. Here a worker claims its slot before it starts: under the study
lock (`hpo.locks`) it counts COMPLETE+PRUNED+RUNNING and, if below N, creates the trial and runs the sampler,
so the next worker's sampler already sees the new RUNNING trial and its params (constant liar).

See docs/ARCHITECTURE.md, "The worker protocol".
"""

from __future__ import annotations

import datetime
import logging
import warnings
from collections.abc import Mapping
from contextlib import ExitStack

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, select

from hpo.dbretry import call_with_retry
from hpo.locks import study_lock
from hpo.optuna_private import TrialModel, backend_of, create_running_trial, heartbeat_thread, study_id
from hpo.reaper import WORKER_ATTR, this_worker, warn_if_sqlite_shared
from hpo.space import suggest

log = logging.getLogger(__name__)

_STATE_KEYS = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "fail",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def budget_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state: complete, pruned, fail, running, waiting."""
    backend = backend_of(study)
    if isinstance(backend, RDBStorage):
        return _sql_counts(backend, study_id(study))
    return _counts(study.get_trials(deepcopy=False))


def _sql_counts(backend: RDBStorage, study_id: int) -> dict[str, int]:
    # Optuna counts trials by loading them all (`get_n_trials` is `len(get_all_trials(...))`: a query per
    # attribute table, then the ORM rows, a cost that grows with the study). The budget needs only counts by
    # state: one GROUP BY, in autocommit (no BEGIN/ROLLBACK round trips), on Optuna's own table model.
    query = select(TrialModel.state, func.count()).where(TrialModel.study_id == study_id).group_by(TrialModel.state)

    def count() -> dict[str, int]:
        with backend.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            rows = conn.execute(query).all()
        return dict.fromkeys(_STATE_KEYS.values(), 0) | {_STATE_KEYS[state]: n for state, n in rows}

    return call_with_retry(getattr(backend, "where", "PostgreSQL"), count, "budget count")


def _counts(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = dict.fromkeys(_STATE_KEYS.values(), 0)
    for t in trials:
        counts[_STATE_KEYS[t.state]] += 1
    return counts


def used_finished(counts: Mapping[str, int]) -> int:
    """Slots of the budget spent for good: COMPLETE and PRUNED trials (FAIL does not count)."""
    return counts["complete"] + counts["pruned"]


def used_slots(counts: Mapping[str, int]) -> int:
    return counts["complete"] + counts["pruned"] + counts["running"]


def claim_trial(
    study: optuna.Study,
    n_trials: int,
    *,
    distributions: Mapping[str, BaseDistribution] | None = None,
    beat: ExitStack | None = None,
    waiting_only: bool = False,
) -> optuna.Trial | None:
    """Take one slot of the budget and create its trial, or None when every slot is finished or running.

    A WAITING trial (a retry, an enqueued config) is taken before a new one is sampled. With `distributions`
    the sampler suggests them under the lock (GP/skopt fits are serialised; the point is published at once).
    The trial records its host and pid (user attr `worker`). With `beat`, the trial's heartbeat starts as soon
    as the trial exists and is left running on that stack, for the caller to keep through the objective (one
    heartbeat thread per trial instead of one for the fit and one for the objective); closing it stops it.
    With `waiting_only` it takes a WAITING trial or nothing: it never samples a new one.
    """
    with study_lock(study) as lock:
        trial = _claim_locked(study, n_trials, distributions, beat, waiting_only)
    if trial is not None and lock.lost:
        trial = _confirm_claim(study, n_trials, trial)
    return trial


def _claim_locked(
    study: optuna.Study,
    n_trials: int,
    distributions: Mapping[str, BaseDistribution] | None,
    beat: ExitStack | None,
    waiting_only: bool = False,
) -> optuna.Trial | None:
    counts = budget_counts(study)
    if used_slots(counts) >= n_trials or (waiting_only and not counts["waiting"]):
        return None
    if counts["running"]:  # a single worker has none running here: no read
        warn_if_sqlite_shared(study)
    trial = _ask(study, waiting=counts["waiting"] > 0)
    if not distributions and beat is None:
        return trial
    stack = ExitStack() if beat is None else beat
    beating = heartbeat_thread(study, trial)  # a slow fit must not look like a dead worker
    beating.start()
    stack.callback(beating.join)
    try:
        for name, dist in (distributions or {}).items():
            suggest(trial, name, dist)
    except Exception as exc:  # a sampler error must not leave a RUNNING trial behind
        stack.close()
        trial.set_user_attr("fail_reason", f"sampler: {type(exc).__name__}: {exc}"[:300])
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    if beat is None:
        stack.close()
    return trial


def _confirm_claim(study: optuna.Study, n_trials: int, trial: optuna.Trial) -> optuna.Trial | None:
    # The lock's connection died while held, so another worker may have claimed the same last slot. Re-count
    # under the lock: workers re-check one at a time, and whoever sees the budget overdrawn gives its slot back.
    with study_lock(study):
        if used_slots(budget_counts(study)) <= n_trials:
            return trial
        trial.set_user_attr("fail_reason", "slot given back: the study lock was lost with the database connection")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    log.warning("trial %d given back: the study lock was lost while claiming it", trial.number)
    return None


def _ask(study: optuna.Study, *, waiting: bool) -> optuna.Trial:
    """`study.ask()`, with the trial's worker attr (host, pid) written in the same transaction as the trial.

    Optuna's `ask` has no way to pass user attrs, so the attr would be one more storage call (a commit on
    PostgreSQL) per trial. With no WAITING trial to pop, this does what `ask` does, creating the RUNNING trial
    from a template that carries the attr (`BaseStorage.create_new_trial(study_id, template_trial)`). A WAITING
    trial (a retry, an enqueued config) goes through `ask`, which pops it, and gets the attr after.
    """
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for Study.optimize; this loop runs the heartbeat itself.
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        if waiting:
            trial = study.ask()
            trial.set_user_attr(WORKER_ATTR, this_worker())
            return trial
    template = FrozenTrial(
        number=0,  # the storage numbers it
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.datetime.now(),  # what the storage stamps a new trial with
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={WORKER_ATTR: this_worker()},
        system_attrs={},
        intermediate_values={},
        trial_id=0,
    )
    return create_running_trial(study, template)
