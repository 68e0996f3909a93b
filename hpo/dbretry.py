"""An RDB storage that rides out a lost database connection (server restart, pg_terminate_backend, SQLite lock).

Hand-rolled because neither Optuna nor SQLAlchemy retries a failed statement: `pool_pre_ping` only replaces
connections that died while idle in the pool, and Optuna turns an error inside a statement into
`StorageInternalError`, which `Study.optimize` lets end the worker. Here every storage method the worker loop,
the samplers and Optuna's cache use is retried with backoff for `HPO_DB_RETRY_SECONDS` (default 60 s), then
the call raises `StorageError`, one line the CLI prints.

Every retried method is idempotent except trial creation: if the server committed a new trial but the reply
was lost, the retry creates a second one. That needs a connection cut in the microseconds between commit and
reply; the orphan stays RUNNING without heartbeat (Optuna never reaps it) and `hpo status` shows it.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, PendingRollbackError

from hpo.errors import StorageError
from hpo.optuna_private import CACHED_BACKEND_METHODS

log = logging.getLogger(__name__)

ENV_RETRY_SECONDS = "HPO_DB_RETRY_SECONDS"
RETRY_SECONDS = 60.0
_MAX_DELAY = 5.0

F = TypeVar("F", bound=Callable[..., Any])


def first_line(exc: BaseException | object) -> str:
    """The first non-empty line of an error's text (driver errors span several lines)."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def retry_seconds() -> float:
    """How long storage calls are retried before giving up (`HPO_DB_RETRY_SECONDS`, default 60)."""
    raw = os.environ.get(ENV_RETRY_SECONDS, "").strip()
    if not raw:
        return RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise StorageError(f"{ENV_RETRY_SECONDS} must be a number of seconds >= 0, got {raw!r}: fix or unset it")
    return value


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is a lost or refused connection or a busy SQLite file: worth a retry."""
    seen: BaseException | None = exc
    while seen is not None:
        # PendingRollbackError: a statement ran on after its connection was invalidated (Optuna's _get_trials
        # catches the OperationalError and queries again in the same session).
        if isinstance(seen, OperationalError | InterfaceError | PendingRollbackError):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if not isinstance(seen, StorageInternalError | DBAPIError):
            return False
        seen = seen.__cause__
    return False


def call_with_retry(where: str, fn: Callable[[], Any], what: str = "storage call") -> Any:
    """Run `fn`; on a connection error retry with backoff until the retry window is spent, then StorageError."""
    deadline: float | None = None
    delay = 0.1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            now = time.monotonic()
            if deadline is None:
                window = retry_seconds()
                deadline = now + window
                log.warning("lost %s (%s); retrying for up to %.0f s", where, first_line(_root(exc)), window)
            if now >= deadline:
                raise StorageError(
                    f"lost {where} during a {what} and it did not come back within {retry_seconds():.0f} s "
                    f"({first_line(_root(exc))}): check the server, then run the same command again "
                    f"(finished trials are kept; {ENV_RETRY_SECONDS} sets the wait)"
                ) from None
            time.sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, _MAX_DELAY)


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _retrying(method: F) -> F:
    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return call_with_retry(self.where, lambda: method(self, *args, **kwargs), method.__name__)

    return call  # type: ignore[return-value]


PING_AFTER_IDLE_S = 1.0  # a pooled connection idle longer than this is pinged before it is used


def ping_when_idle(engine: Engine, idle_s: float = PING_AFTER_IDLE_S) -> None:
    """Pre-ping a pooled connection on checkout when it sat in the pool for more than `idle_s` seconds.

    SQLAlchemy's `pool_pre_ping` pings on every checkout, and Optuna opens a session per storage call: a trial
    paid about 25 pings, a round trip each, half of what our worker path cost over plain Optuna on PostgreSQL
    (bench/bench_storage.py). A connection checked in under `idle_s` ago was alive then; if the server dropped
    it since, its statement fails, SQLAlchemy invalidates it and `RetryingRDBStorage` reruns the call on a new
    one. This is SQLAlchemy's "pessimistic disconnect handling" recipe (a checkout event that raises
    `DisconnectionError`, so the pool replaces the connection), with an idle threshold.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since <= idle_s:  # new, or used a moment ago
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the driver's error for a dead connection: have the pool connect afresh
            raise DisconnectionError(f"pooled connection failed its ping: {first_line(exc)}") from exc


class RetryingRDBStorage(RDBStorage):
    """`RDBStorage` whose methods retry on a lost connection; `where` names the database in messages.

    On PostgreSQL, pooled connections idle for more than `PING_AFTER_IDLE_S` are pinged before use.
    """

    def __init__(self, url: str, *, where: str, **kwargs: Any) -> None:
        self.where = where
        super().__init__(url, **kwargs)
        if self.engine.dialect.name == "postgresql":
            ping_when_idle(self.engine)

    def record_heartbeat(self, trial_id: int) -> None:
        # The heartbeat thread beats again one interval later: a missed beat is no reason to stall or die
        # (an exception would end the thread and let other workers reap a live trial).
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.debug("heartbeat of trial id %d missed: %s", trial_id, first_line(exc))


# The public methods, and the private ones Optuna's cache (and `stale_trial_ids`) call on the backend.
_RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    *CACHED_BACKEND_METHODS,
    "_get_stale_trial_ids",  # `optuna_private.stale_trial_ids`
)
for _name in _RETRIED:
    setattr(RetryingRDBStorage, _name, _retrying(getattr(RDBStorage, _name)))
