"""An RDB storage that rides out a lost database connection (server restart, pg_terminate_backend, SQLite lock).

Hand-rolled because neither Optuna nor SQLAlchemy retries a failed statement: `pool_pre_ping` only replaces
connections that died while idle in the pool, and Optuna turns an error inside a statement into
`StorageInternalError`, which `Study.optimize` lets end the worker. Here every storage method the worker loop,
the samplers and Optuna's cache use is retried with backoff for `HPO_DB_RETRY_SECONDS` (default 60 s), then
the call raises `StorageError`, one line the CLI prints.

Every write the storage repeats is safe to repeat. A reply lost after the server committed (a connection cut
between commit and reply) makes the retry find its own write: before repeating a write, the retry reads what
is stored and, when the first attempt took, returns what that attempt would have returned (`_AFTER_LOST_REPLY`).
Finishing a trial again returns True instead of raising `UpdateFinishedTrialError`; claiming a WAITING trial
again returns True instead of "not claimed"; a new trial carries a unique `hpo:create_id` system attr, so
repeating its creation (ours, or Optuna's own deadlock retry) returns the trial already made.
Attribute, param and intermediate-value writes are upserts (or ignore the duplicate) and repeat as they are.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, PendingRollbackError

from hpo.errors import StorageError
from hpo.optuna_private import CACHED_BACKEND_METHODS, TrialModel

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


# OperationalErrors that no wait repairs, with the fix to name: the user must act. Retrying them for the whole
# window (HPO_DB_RETRY_SECONDS) only delays the one line that names the fix.
PERMANENT_ERRORS = (
    ("file is not a database", "it is not an SQLite database (another file?): give the right file or a new name;"),
    ("database disk image is malformed", "the SQLite file is corrupt: restore it from a backup or use a new one;"),
    ("readonly database", "it is not writable: fix the permissions of the file and its directory, or use another;"),
    ("database or disk is full", "its disk is full: free space on it, or put the database elsewhere;"),
    ("no space left", "its disk is full: free space on it, or put the database elsewhere;"),
    ("disk i/o error", "its disk failed a read or write: check the disk, or put the database elsewhere;"),
    ("password authentication failed", "the server refused the login: fix the user or password in the URL;"),
)


def permanent_fix(exc: BaseException | str) -> str | None:
    """The fix for a database error no retry repairs (read-only or full disk, not a database), else None."""
    text = str(exc).lower()
    return next((fix for needle, fix in PERMANENT_ERRORS if needle in text), None)


def is_permanent(exc: BaseException) -> bool:
    """Whether an OperationalError's text names a fault no retry repairs (read-only or full disk, bad file)."""
    return permanent_fix(exc) is not None


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is a lost or refused connection or a busy SQLite file: worth a retry."""
    seen: BaseException | None = exc
    while seen is not None:
        # PendingRollbackError: a statement ran on after its connection was invalidated (Optuna's _get_trials
        # catches the OperationalError and queries again in the same session).
        if isinstance(seen, OperationalError | InterfaceError | PendingRollbackError):
            return not is_permanent(seen)
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
                db_error = _db_error(exc)
                fix = permanent_fix(db_error) if db_error is not None else None
                if fix is not None:
                    raise StorageError(f"{where} refused a {what} ({first_line(db_error)}): {fix[:-1]}") from None
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


def _db_error(exc: BaseException) -> BaseException | None:
    """The driver's error behind `exc` (Optuna wraps SQLAlchemy's, which wraps the driver's), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DBAPIError):
            return seen.orig or seen
        seen = seen.__cause__
    return None


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


_AGAIN: Any = object()  # a `_AFTER_LOST_REPLY` check's answer: the first attempt did not take, repeat the write


def _retrying(method: F) -> F:
    name = method.__name__
    after_lost_reply = _AFTER_LOST_REPLY.get(name)

    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        # Looked up at call time (not bound at import), so that fault-injection tests can wrap RDBStorage's method.
        underlying = getattr(RDBStorage, name)
        if after_lost_reply is None:
            return call_with_retry(self.where, lambda: underlying(self, *args, **kwargs), name)
        started = datetime.datetime.now()
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # the previous attempt may have committed before its reply was lost
                found = after_lost_reply(self, started, *args, **kwargs)
                if found is not _AGAIN:
                    log.info("%s had taken before its reply was lost: not repeated", name)
                    return found
            return underlying(self, *args, **kwargs)

        return call_with_retry(self.where, attempt, name)

    return call  # type: ignore[return-value]


def _study_created(
    storage: RDBStorage, started: datetime.datetime, directions: Sequence[StudyDirection], study_name: str | None = None
) -> Any:
    # Workers create a study with load_if_exists: one that exists by now is the study this call made or would load.
    if study_name is None:
        return _AGAIN
    try:
        return RDBStorage.get_study_id_from_name(storage, study_name)
    except KeyError:
        return _AGAIN


def _study_deleted(storage: RDBStorage, started: datetime.datetime, study_id: int) -> Any:
    try:
        RDBStorage.get_study_name_from_id(storage, study_id)
    except KeyError:
        return None
    return _AGAIN


def _state_set(
    storage: RDBStorage,
    started: datetime.datetime,
    trial_id: int,
    state: TrialState,
    values: Sequence[float] | None = None,
) -> Any:
    """True when the trial already holds what this call writes, set since it started (our lost write)."""
    trial = RDBStorage.get_trial(storage, trial_id)
    if trial.state != state:
        return _AGAIN
    if state == TrialState.RUNNING:  # a WAITING trial claimed by our first attempt (the claim runs under the lock)
        return True if trial.datetime_start is not None and trial.datetime_start >= started else _AGAIN
    if state.is_finished():
        same_values = (trial.values is None and values is None) or (
            trial.values is not None and values is not None and list(trial.values) == list(values)
        )
        done_now = trial.datetime_complete is not None and trial.datetime_complete >= started
        return True if same_values and done_now else _AGAIN
    return _AGAIN


# What a repeated write checks first: (storage, when the call started, the call's args) -> its result or _AGAIN.
_AFTER_LOST_REPLY: dict[str, Callable[..., Any]] = {
    "create_new_study": _study_created,
    "delete_study": _study_deleted,
    "set_trial_state_values": _state_set,
}

CREATE_ID_ATTR = "hpo:create_id"  # system attr: which storage call created a trial (to find it after a lost reply)


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
        self._creating = threading.local()  # the create id of the trial this thread is creating, and its tries
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

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        # A unique create id goes into the trial (same transaction); a repeat of this creation, by us after a lost
        # reply or by Optuna's own retry loop in `RDBStorage._create_new_trial`, finds the trial it made.
        if template_trial is None:  # what RDBStorage makes of no template: RUNNING, started now
            template_trial = FrozenTrial(
                number=0,
                state=TrialState.RUNNING,
                value=None,
                datetime_start=datetime.datetime.now(),
                datetime_complete=None,
                params={},
                distributions={},
                user_attrs={},
                system_attrs={},
                intermediate_values={},
                trial_id=0,
            )
        create_id = uuid.uuid4().hex
        template = copy.copy(template_trial)  # the caller's template is left as it was
        template.system_attrs = {**template_trial.system_attrs, CREATE_ID_ATTR: create_id}
        self._creating.create_id, self._creating.tries = create_id, 0
        try:
            return call_with_retry(
                self.where, lambda: RDBStorage._create_new_trial(self, study_id, template), "_create_new_trial"
            )
        finally:
            self._creating.create_id = None

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None, session: Any) -> Any:
        # Inside the creating transaction: on a repeat, the trial the lost attempt committed is the one to return.
        create_id = getattr(self._creating, "create_id", None)
        if create_id is not None and template_trial is not None:
            self._creating.tries += 1
            if self._creating.tries > 1:
                made = (
                    session.query(TrialModel)
                    .filter(TrialModel.study_id == study_id)
                    .filter(TrialModel.system_attributes.any(key=CREATE_ID_ATTR, value_json=json.dumps(create_id)))
                    .one_or_none()
                )
                if made is not None:
                    log.info("trial %d was created before its reply was lost: not created again", made.number)
                    return made
        return super()._get_prepared_new_trial(study_id, template_trial, session)  # type: ignore[misc]


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
    "create_new_trial",  # `_create_new_trial` (below) retries, and finds a trial its lost reply made
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
    if _name != "_create_new_trial":  # overridden above: it retries itself
        setattr(RetryingRDBStorage, _name, _retrying(getattr(RDBStorage, _name)))
