"""Where a study lives (DESIGN §7): resolve the URL, open the storage, reap trials of dead workers.

Three kinds of URL:

- ``sqlite:///hpo.db`` (default): one machine, one worker (SQLite serialises writers).
- ``postgresql+psycopg://user[:password]@host[:port]/db``: many machines.
- ``journal:///hpo.log`` (relative, like SQLite) or ``journal:////abs/hpo.log``: Optuna's journal file,
  several processes on one machine without a server.

RDB storages run with a heartbeat so a killed worker's trial becomes FAIL and is re-queued once
(``RetryHeartbeatStaleTrialCallback``); the journal storage has no heartbeat in Optuna 5, so each trial
records its host and pid (user attr `worker`) and `reap_stale` fails the trials of processes that are gone on this host.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback, _CachedStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import NullPool

from hpo.dbretry import RetryingRDBStorage, first_line
from hpo.errors import StorageError

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///hpo.db"
ENV_STORAGE = "HPO_STORAGE"
ENV_HEARTBEAT_INTERVAL = "HPO_HEARTBEAT_INTERVAL"
ENV_HEARTBEAT_GRACE = "HPO_HEARTBEAT_GRACE"
HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
HEARTBEAT_GRACE = 30  # seconds without a heartbeat before a RUNNING trial counts as dead
JOURNAL_PREFIX = "journal:///"
_FIX = "check --storage / HPO_STORAGE"
# pg_advisory_lock key serialising Optuna's schema creation (a constant: it is per database, not per study).
_SCHEMA_LOCK_KEY = 0x5650_4850_4F53_4348  # "VPHPOSCH"
_SCHEMES = "sqlite:///FILE.db, postgresql+psycopg://USER@HOST:PORT/DB or journal:///FILE.log"

# user:password@ in any scheme; the password may hold anything up to the last '@' (masking too much is safe).
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:@/]*):(?P<password>.*)@(?P<tail>[^@]*)$")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&#]*")


def resolve_url(flag: str | None) -> str:
    """The storage URL: the `--storage` flag, else env `HPO_STORAGE`, else `sqlite:///hpo.db` (cwd)."""
    for value in (flag, os.environ.get(ENV_STORAGE)):
        if value is not None and value.strip():
            return value.strip()
    return DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with its password (userinfo or `password=` query) replaced by `***`, for every printed URL."""
    m = _USERINFO.match(url)
    if m and m.group("password"):
        url = f"{m.group('head')}:***@{m.group('tail')}"
    return _QUERY_SECRET.sub(r"\1***", url)


def _env_seconds(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise StorageError(f"{name} must be a whole number of seconds > 0, got {raw!r}: fix or unset it")
    return value


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds, from `HPO_HEARTBEAT_INTERVAL` / `HPO_HEARTBEAT_GRACE` or the defaults."""
    interval = _env_seconds(ENV_HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL)
    grace = _env_seconds(ENV_HEARTBEAT_GRACE, max(HEARTBEAT_GRACE, 3 * interval))
    if grace <= interval:
        raise StorageError(
            f"{ENV_HEARTBEAT_GRACE}={grace} must exceed {ENV_HEARTBEAT_INTERVAL}={interval}: "
            "give the grace period a few heartbeats (e.g. 3x the interval)"
        )
    return interval, grace


def open_storage(url: str, *, heartbeat: bool = True) -> BaseStorage:
    """Open the storage behind `url` (see the module doc for the URL forms).

    Args:
        url: a resolved storage URL (`resolve_url`).
        heartbeat: RDB only: record heartbeats of running trials and reap stale ones (workers, `status`).

    Raises:
        StorageError: unknown scheme, malformed URL, missing directory, or a server that does not answer.
    """
    if url.startswith(JOURNAL_PREFIX):
        return _open_journal(url)
    if url.startswith(("postgresql://", "postgres://")):
        # A bare postgresql:// would make SQLAlchemy look for psycopg2; psycopg 3 is the driver we ship.
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("sqlite", "postgresql+psycopg"):
        raise StorageError(f"unknown storage URL {mask_url(url)!r}: use {_SCHEMES}; {_FIX}")
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"malformed storage URL {mask_url(url)!r} ({exc}): use {_SCHEMES}") from None
    kwargs: dict[str, Any] = {}
    if heartbeat:
        interval, grace = heartbeat_settings()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental" in Optuna 5
            retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
        kwargs = {"heartbeat_interval": interval, "grace_period": grace, "heartbeat_stale_trial_callback": retry}
    if scheme == "sqlite":
        where = f"SQLite file {parsed.database or ':memory:'}"
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 10}}
    else:
        where = f"PostgreSQL at {parsed.host or 'localhost'}:{parsed.port or 5432}"
        # Small pool of three: the main thread, the heartbeat thread and the study lock each hold one while a
        # trial is claimed (with two, the third was a new server connection every trial, opened and closed).
        # A connection idle in the pool for over a second is pinged before use, and replaced if the server
        # dropped it (restart, pg_terminate_backend): RetryingRDBStorage installs that check
        # (`dbretry.ping_when_idle`) in place of pool_pre_ping's ping on every checkout.
        engine_kwargs = {
            "pool_size": 3,
            "max_overflow": 4,
            "connect_args": {"connect_timeout": 5},
        }
    try:
        with _schema_lock(url) if scheme != "sqlite" else nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return RetryingRDBStorage(url, where=where, engine_kwargs=engine_kwargs, **kwargs)
    except OperationalError as exc:
        detail = mask_url(first_line(exc.orig or exc))
        if scheme == "sqlite":
            hint = "does its directory exist?"
        elif "does not exist" in detail:
            hint = f"create it (createdb {parsed.database}) or fix the URL;"
        else:
            hint = "is the server running and the URL right?"
        raise StorageError(f"cannot open {where} ({detail}): {hint} {_FIX}") from None
    except RuntimeError as exc:  # Optuna's schema-version check
        raise StorageError(
            f"{where} holds an Optuna schema of another version ({first_line(exc)}): "
            f"run `optuna storage upgrade --storage URL`"
        ) from None


@contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while Optuna creates or checks its tables.

    Optuna's RDBStorage creates the schema (enum types, tables, version rows, alembic stamp) without a lock:
    workers started together on a fresh database failed with `duplicate key ... studydirection` (measured
    here with 3 `hpo run`). The lock lives on an unpooled connection of its own: closing it releases the lock.
    """
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            conn.commit()
            yield
    finally:
        engine.dispose()


def _open_journal(url: str) -> JournalStorage:
    # Same convention as SQLite URLs: journal:///rel.log is relative to the cwd, journal:////abs.log absolute.
    path = url[len(JOURNAL_PREFIX) :]
    if not path:
        raise StorageError(f"journal URL {url!r} names no file: use journal:///FILE.log (or journal:////ABS/FILE.log)")
    try:
        return JournalStorage(JournalFileBackend(path))
    except OSError as exc:
        raise StorageError(
            f"cannot open journal file {path} ({exc.strerror}): does its directory exist and is it writable? {_FIX}"
        ) from None


def backend_of(study: optuna.Study) -> BaseStorage:
    """The storage object behind a study (Optuna wraps RDB storages in a cache and has no public handle)."""
    storage = study._storage
    if isinstance(storage, _CachedStorage):
        return storage._backend
    return storage


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
    from hpo.locks import study_lock  # locks imports this module

    backend = backend_of(study)
    if isinstance(backend, RDBStorage):
        if backend.get_heartbeat_interval() is None:
            return 0
        # One query in the usual case (nothing stale), instead of three: this runs before every claim.
        if not backend._get_stale_trial_ids(study._study_id):
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
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"worker gone (pid {pid} on {host} exited)")
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished after all
        reaped += 1
        log.warning("trial %d: worker pid %d is gone: marked FAIL", t.number, pid)
        if t.params and "retry_of" not in t.user_attrs:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            log.info("trial %d re-queued with the same params", t.number)
    return reaped


def rdb_backend(study: optuna.Study, dialect: str) -> RDBStorage | None:
    """The study's RDB storage when its database is `dialect` ("postgresql", "sqlite"), else None."""
    backend = backend_of(study)
    if isinstance(backend, RDBStorage) and backend.engine.dialect.name == dialect:
        return backend
    return None


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
