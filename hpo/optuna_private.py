"""Every use of Optuna's private API, in one place, each with the reason no public call does the job.

One use lives elsewhere because it is an override, not a call: `hpo.dbretry.RetryingRDBStorage` overrides
`RDBStorage._get_prepared_new_trial` (Optuna retries a trial's creation inside it, so only there can a retry
find the trial its lost reply had already committed). An Optuna upgrade that moves one of these breaks this file
(or that override) and nothing else; `tests/test_storage.py` and
`tests/test_worker.py` exercise each function on SQLite, PostgreSQL and journal storages. Checked against
Optuna 5.1. See docs/ARCHITECTURE.md, "Optuna facts the code relies on".
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeatThread, get_heartbeat_thread
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "CACHED_BACKEND_METHODS",
    "TrialModel",
    "backend_of",
    "contains",
    "create_running_trial",
    "force_state",
    "heartbeat_thread",
    "journal_path",
    "rdb_backend",
    "stale_trial_ids",
    "storage_of",
    "study_id",
]

# Optuna's ORM model of the trials table: the budget counts trials by state in one GROUP BY on it, where the
# public `get_n_trials` loads every trial (a query per attribute table) to count them.
TrialModel = models.TrialModel

# The private RDBStorage methods that Optuna's `_CachedStorage` calls on its backend: a storage that retries
# its calls must retry these too (`hpo.dbretry`).
CACHED_BACKEND_METHODS = ("_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id")


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study writes through (a `Study` has no public handle on it)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (the storage API is keyed on it; `Study` does not expose it)."""
    return study._study_id


def backend_of(study: optuna.Study) -> BaseStorage:
    """The storage object behind a study: Optuna wraps RDB storages in a cache and has no public handle."""
    storage = study._storage
    if isinstance(storage, _CachedStorage):
        return storage._backend
    return storage


def rdb_backend(study: optuna.Study, dialect: str) -> RDBStorage | None:
    """The study's RDB storage when its database is `dialect` ("postgresql", "sqlite"), else None."""
    backend = backend_of(study)
    if isinstance(backend, RDBStorage) and backend.engine.dialect.name == dialect:
        return backend
    return None


def journal_path(backend: JournalStorage) -> str | None:
    """The file behind a journal storage (`JournalFileBackend` keeps its path private), or None."""
    path = getattr(backend._backend, "_file_path", None)
    return path if isinstance(path, str) else None


def stale_trial_ids(backend: RDBStorage, study: optuna.Study) -> list[int]:
    """Ids of RUNNING trials whose heartbeat is older than the grace period: one query.

    The public `fail_stale_trials` costs three queries even when nothing is stale, and it runs before every
    claim; this lets the caller skip it in the usual case.
    """
    return list(backend._get_stale_trial_ids(study._study_id))


def heartbeat_thread(study: optuna.Study, trial: optuna.Trial) -> BaseHeartbeatThread:
    """Optuna's own heartbeat thread for a trial (what `Study.optimize` runs); a no-op without RDB heartbeats.

    The worker loop is not `Study.optimize` (it claims budget slots under a lock), so it starts the thread itself.
    """
    return get_heartbeat_thread(trial._trial_id, study._storage)


def create_running_trial(study: optuna.Study, template: FrozenTrial) -> optuna.Trial:
    """What `study.ask()` does when no trial is WAITING, but from a template that carries user attrs.

    `ask` takes no attrs, so recording the worker on a trial would cost one more commit per trial; the storage
    API's `create_new_trial(study_id, template_trial)` writes both in one transaction.
    """
    study._thread_local.cached_all_trials = None  # as `ask` does: the sampler reads the trials afresh
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return optuna.Trial(study, trial_id)


def force_state(study: optuna.Study, trial: FrozenTrial, state: TrialState, reason: str) -> None:
    """Finish a trial this process does not run (a dead worker's, a superseded retry) with a `fail_reason`.

    `Study.tell` accepts only trials asked in this process or RUNNING ones by number and refuses WAITING
    ones; the storage API takes any trial by id.

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: the trial finished meanwhile.
    """
    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    study._storage.set_trial_state_values(trial._trial_id, state)


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` (external representation) lies in `dist`: Optuna has only the private `_contains`."""
    return bool(dist._contains(dist.to_internal_repr(value)))
