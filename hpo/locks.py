"""One lock per study across every worker process, so that claiming a budget slot is atomic.

PostgreSQL: a session advisory lock keyed on the study name, held on a connection of its own (it dies with
the connection, so a crashed worker never leaves it behind). SQLite and journal files: a `filelock` next to the
file (flock, also released by the kernel when a process dies). In-memory storages: a process-local lock.

Optuna has no cross-process lock of its own to lend, hence this module.

See docs/ARCHITECTURE.md, "The worker protocol".
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.storages import JournalStorage, RDBStorage
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from hpo.dbretry import call_with_retry, first_line
from hpo.errors import StorageError
from hpo.optuna_private import backend_of, journal_path, rdb_backend

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".hpo-lock"  # not ".lock": Optuna's journal file lock already uses that name
_local_locks: dict[str, threading.RLock] = {}
_local_guard = threading.Lock()


@dataclass
class LockState:
    """`lost` is set on release when the lock's connection died while held (another worker may have held it)."""

    lost: bool = False


def advisory_key(study_name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock derived from the study name."""
    digest = hashlib.blake2b(f"vp-hpo:{study_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def study_lock(study: optuna.Study) -> Iterator[LockState]:
    """Hold the study's cross-process lock for the `with` body; yields a `LockState`."""
    state = LockState()
    pg = rdb_backend(study, "postgresql")
    if pg is not None:
        where = getattr(pg, "where", "PostgreSQL")
        with _advisory_lock(pg.engine, advisory_key(study.study_name), where, state):
            yield state
        return
    path = _lock_path(backend_of(study))
    if path is None:
        with _local_lock(study.study_name):
            yield state
        return
    with file_lock(path):
        yield state


@contextmanager
def file_lock(path: str, what: str = "study lock") -> Iterator[None]:
    """The `filelock` at `path`; a path that cannot be a lock file is a StorageError naming it and the fix."""
    lock = FileLock(path)
    try:
        lock.acquire()
    except OSError as exc:
        if Path(path).is_dir():
            fix = "it is a directory: remove it (the lock is a file `hpo run` makes) or move the storage file"
        else:
            fix = "the storage's folder must be writable: fix its permissions or move the storage file"
        raise StorageError(f"cannot take the {what} {path} ({exc.strerror or exc}): {fix}") from None
    try:
        yield
    finally:
        lock.release()


def _lock_path(backend: object) -> str | None:
    if isinstance(backend, RDBStorage) and backend.engine.dialect.name == "sqlite":
        database = backend.engine.url.database
        if database and database != ":memory:":
            return database + LOCK_SUFFIX
        return None
    if isinstance(backend, JournalStorage):
        file_path = journal_path(backend)
        return file_path + LOCK_SUFFIX if file_path is not None else None
    return None


def _local_lock(name: str) -> threading.RLock:
    with _local_guard:
        return _local_locks.setdefault(name, threading.RLock())


@contextmanager
def _advisory_lock(engine: Engine, key: int, where: str, state: LockState) -> Iterator[None]:
    def acquire() -> Connection:
        # Autocommit: a session-level lock outlives transactions, so none is opened (no BEGIN/COMMIT round trips,
        # no snapshot held while the lock is).
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        except BaseException:
            conn.invalidate()  # never hand a half-locked connection back to the pool
            conn.close()
            raise
        return conn

    conn: Connection = call_with_retry(where, acquire, "lock")
    try:
        yield
    finally:
        try:
            released = conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key}).scalar()
            state.lost = not released
        except SQLAlchemyError as exc:  # the connection died while we held the lock: the server dropped the lock
            log.warning("the study lock's connection to %s was lost while held: %s", where, first_line(exc))
            state.lost = True
            conn.invalidate()
        finally:
            conn.close()
