"""Which worker runs a trial, and failing the trials of workers that are gone (docs/ARCHITECTURE.md, "Workers").

Every trial records its host and pid (user attr `worker`). RDB storages find dead workers by their heartbeats
(Optuna's `fail_stale_trials`, which Optuna itself runs only when a live worker starts its next trial). The
journal storage has no heartbeat in Optuna 5, so RUNNING trials recorded on this host whose pid is gone are
failed here. Either way the trial is re-queued once with the same params.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState

from hpo.locks import study_lock
from hpo.optuna_private import backend_of, force_state, rdb_backend, stale_trial_ids
from hpo.storage import heartbeat_settings

log = logging.getLogger(__name__)

WORKER_ATTR = "worker"  # user attr {"host": ..., "pid": ...}: the process running a trial (one storage write)


def this_worker() -> dict[str, Any]:
    """The `WORKER_ATTR` value of this process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def worker_of(trial: optuna.trial.FrozenTrial) -> tuple[str | None, int | None]:
    """(host, pid) recorded on a trial, None where missing or malformed."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    if not isinstance(worker, dict):
        return None, None
    host, pid = worker.get("host"), worker.get("pid")
    return (host if isinstance(host, str) else None), (pid if isinstance(pid, int) else None)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as alive until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_interval(study: optuna.Study) -> float:
    """Seconds between reaps worth doing: the storage's heartbeat interval (RDB), else `heartbeat_settings`'s."""
    backend = backend_of(study)
    interval = backend.get_heartbeat_interval() if isinstance(backend, RDBStorage) else None
    return float(interval) if interval else float(heartbeat_settings()[0])


def reap_stale(study: optuna.Study) -> int:
    """Fail the RUNNING trials of dead workers and re-queue each once; returns how many were failed.

    RDB: Optuna's heartbeat check (`fail_stale_trials`), which Optuna itself runs only when a live worker
    starts its next trial. Journal (no heartbeats in Optuna 5): RUNNING trials recorded on this host whose
    pid is gone become FAIL with fail_reason "worker gone" and are re-queued once with the same params.
    """
    backend = backend_of(study)
    if isinstance(backend, RDBStorage):
        if backend.get_heartbeat_interval() is None:
            return 0
        # One query in the usual case (nothing stale), instead of three: this runs before every claim.
        if not stale_trial_ids(backend, study):
            return 0
        # Under the study lock: `fail_stale_trials` marks the trial FAIL and only then queues its retry (the
        # RetryFailedTrialCallback), so a claim in between would see a free slot and no WAITING trial, sample a
        # new one, and the retry would be left WAITING once that trial filled the budget (seen in CI).
        with study_lock(study):
            before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        return sum(1 for t in failed if t.number in before and "fail_reason" not in t.user_attrs)
    if isinstance(backend, JournalStorage):
        with study_lock(study):
            return _reap_journal(study)
    return 0


def _reap_journal(study: optuna.Study) -> int:
    host, reaped = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, pid = worker_of(t)
        if where != host or pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        try:
            force_state(study, t, TrialState.FAIL, f"worker gone (pid {pid} on {host} exited)")
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished after all
        reaped += 1
        log.warning("trial %d: worker pid %d is gone: marked FAIL", t.number, pid)
        if t.params and "retry_of" not in t.user_attrs:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            log.info("trial %d re-queued with the same params", t.number)
    return reaped


_warned_shared: set[str] = set()


def warn_if_sqlite_shared(study: optuna.Study) -> None:
    """Warn once per file when RUNNING trials of other live processes show a SQLite file has several workers.

    Call it only when the study has RUNNING trials (a budget count says so): it reads them.
    """
    backend = rdb_backend(study, "sqlite")
    if backend is None:
        return
    path = backend.engine.url.database or ":memory:"
    if path in _warned_shared:
        return
    worker = this_worker()
    me = (worker["host"], worker["pid"])
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = worker_of(t)
        if pid is None or (host, pid) == me:
            continue
        if host != me[0] or pid_alive(pid):
            _warned_shared.add(path)
            log.warning(
                "SQLite file %s is used by more than one worker process (also pid %s on %s): SQLite serialises "
                "writers and may stall; use journal:///FILE.log for several processes on one machine, or PostgreSQL "
                "(postgresql+psycopg://...) for several machines",
                path,
                pid,
                host,
            )
            return
