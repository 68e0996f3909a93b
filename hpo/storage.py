"""Where a study lives: resolve the storage URL, mask its password for printing, open the storage.

Three kinds of URL:

- ``sqlite:///hpo.db`` (default): one machine, one worker (SQLite serialises writers).
- ``postgresql+psycopg://user[:password]@host[:port]/db``: many machines.
- ``journal:///hpo.log`` (relative, like SQLite) or ``journal:////abs/hpo.log``: Optuna's journal file,
  several processes on one machine without a server. A plain path (``hpo.log``), the form the ``optuna``
  command line takes, means the same file.

RDB storages run with a heartbeat so a killed worker's trial becomes FAIL and is re-queued once
(``RetryHeartbeatStaleTrialCallback``); `hpo.reaper` finds dead workers' trials on every kind of storage.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError
from sqlalchemy.pool import NullPool

from hpo.dbretry import RetryingRDBStorage, first_line, permanent_fix
from hpo.errors import StorageError
from hpo.locks import LOCK_SUFFIX, file_lock

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///hpo.db"
ENV_STORAGE = "HPO_STORAGE"
ENV_OPTUNA_STORAGE = "OPTUNA_STORAGE"  # Optuna's own variable, read after ours
ENV_STORAGES = (ENV_STORAGE, ENV_OPTUNA_STORAGE)
ENV_HEARTBEAT_INTERVAL = "HPO_HEARTBEAT_INTERVAL"
ENV_HEARTBEAT_GRACE = "HPO_HEARTBEAT_GRACE"
HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
HEARTBEAT_GRACE = 30  # seconds without a heartbeat before a RUNNING trial counts as dead
JOURNAL_PREFIX = "journal:///"
_FIX = "check --storage / HPO_STORAGE / OPTUNA_STORAGE"
# pg_advisory_lock key serialising Optuna's schema creation (a constant: it is per database, not per study).
_SCHEMA_LOCK_KEY = 0x5650_4850_4F53_4348  # "VPHPOSCH"
_SCHEMES = "sqlite:///FILE.db, postgresql+psycopg://USER@HOST:PORT/DB or journal:///FILE.log"

# user:password@ in any scheme; the password may hold anything up to the last '@' (masking too much is safe).
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:@/]*):(?P<password>.*)@(?P<tail>[^@]*)$")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&#]*")


def resolve_url(flag: str | None) -> str:
    """The storage URL: the `--storage` flag, else env `HPO_STORAGE`, else env `OPTUNA_STORAGE` (what Optuna users
    set), else `sqlite:///hpo.db` (cwd). Which one was used is logged (`-v`) and `hpo status` prints it.

    A value without a scheme is Optuna's form of a journal file (its command line takes a plain path): `hpo.log`
    is `journal:///hpo.log`, `/abs/hpo.log` is `journal:////abs/hpo.log`.

    Raises:
        StorageError: a plain path that names an SQLite file by its suffix (`hpo.db`): it needs `sqlite:///`.
    """
    url, source = resolve_source(flag)
    _log_source(url, source)
    return url


def resolve_source(flag: str | None) -> tuple[str, str]:
    """`resolve_url`'s URL and where it came from: `--storage`, `$HPO_STORAGE`, `$OPTUNA_STORAGE` or `default`."""
    for value, source in ((flag, "--storage"), *((os.environ.get(env), f"${env}") for env in ENV_STORAGES)):
        if value is not None and value.strip():
            return _scheme_for_path(value.strip(), source), source
    return DEFAULT_URL, "default"


@functools.cache
def _log_source(url: str, source: str) -> None:
    # Cached: commands resolve the URL more than once, and one line says it.
    log.info("storage %s (from %s)", mask_url(url), source)


def _scheme_for_path(value: str, source: str) -> str:
    """A plain path is a journal file, as on Optuna's command line; a URL is left as it is."""
    if "://" in value:
        return value
    if Path(value).suffix.lower() in (".db", ".sqlite", ".sqlite3"):
        raise StorageError(
            f"storage {value!r} (from {source}) is a path without a scheme, which is read as a journal file: "
            f"for an SQLite database write sqlite:///{value}"
        )
    return JOURNAL_PREFIX + str(Path(value).expanduser())


def mask_url(url: str) -> str:
    """The URL with its password (userinfo or `password=` query) replaced by `***`, for every printed URL."""
    m = _USERINFO.match(url)
    if m and m.group("password"):
        url = f"{m.group('head')}:***@{m.group('tail')}"
    return _QUERY_SECRET.sub(r"\1***", url)


def url_secrets(url: str) -> set[str]:
    """The password a URL carries (userinfo or `password=` query), as written, decoded and encoded, and its parts.

    A parser that splits a password at `@`, `:` or `/` prints pieces of it: each piece of 3 characters or more is
    a secret too.
    """
    found: set[str] = set()
    m = _USERINFO.match(url)
    if m and m.group("password"):
        found.add(m.group("password"))
    found.update(v.split("=", 1)[1] for v in re.findall(r"(?i)[?&](?:password|passwd|pwd)=[^&#]*", url))
    for secret in list(found):
        found.update((unquote(secret), quote(secret, safe=""), quote(unquote(secret), safe="")))
    for secret in list(found):
        found.update(piece for piece in re.split(r"[@:/?#%]", secret) if len(piece) >= 3)
    return {s for s in found if s}


def mask_secrets(text: str, urls: Iterable[str]) -> str:
    """`text` with every URL of `urls` masked and every password they carry (or piece of one) as `***`."""
    secrets: set[str] = set()
    for url in urls:
        if url in text:
            text = text.replace(url, mask_url(url))
        secrets |= url_secrets(url)
    for secret in sorted(secrets, key=len, reverse=True):  # the whole password before its pieces
        text = text.replace(secret, "***")
    return text


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


def open_storage(url: str, *, heartbeat: bool = True, create: bool = True) -> BaseStorage:
    """Open the storage behind `url` (see the module doc for the URL forms).

    Args:
        url: a resolved storage URL (`resolve_url`).
        heartbeat: RDB only: record heartbeats of running trials and reap stale ones (workers, `status`).
        create: create a missing SQLite or journal file (workers). Commands that only read pass False: a
            missing file is then a StorageError naming it, and nothing is created.

    Raises:
        StorageError: unknown scheme, malformed URL, missing file or directory, a file that is not a database,
            a locked, read-only or full database, or a server that does not answer or refuses the login.
    """
    if url.startswith(JOURNAL_PREFIX):
        return _open_journal(url, create)
    if url.startswith(("postgresql://", "postgres://")):
        # A bare postgresql:// would make SQLAlchemy look for psycopg2; psycopg 3 is the driver we ship.
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("sqlite", "postgresql+psycopg"):
        raise StorageError(f"unknown storage URL {mask_url(url)!r}: use {_SCHEMES}; {_FIX}")
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 (a port that is not a number fails here)
    except (ArgumentError, ValueError):
        # The parser's own text would quote the URL split at the wrong `@` or `:`: pieces of the password.
        raise StorageError(
            f"malformed storage URL {mask_url(url)!r}: use {_SCHEMES}; URL-encode a password with @ : / or % "
            "in it (e.g. @ as %40)"
        ) from None
    if scheme == "sqlite":
        _check_file(parsed.database, "SQLite file", create)
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
    if scheme != "sqlite":
        schema_lock: Any = _schema_lock(url)
    elif create and parsed.database and parsed.database != ":memory:" and Path(parsed.database).parent.is_dir():
        # (a missing folder is SQLite's error to give, below: filelock would create it, and the file in it)
        schema_lock = _sqlite_schema_lock(parsed.database)
    else:
        schema_lock = nullcontext()
    try:
        with schema_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return RetryingRDBStorage(url, where=where, engine_kwargs=engine_kwargs, **kwargs)
    except DatabaseError as exc:  # OperationalError, and sqlite3's "file is not a database"
        detail = mask_secrets(first_line(exc.orig or exc), [url])
        raise StorageError(f"cannot open {where} ({detail}): {_open_hint(scheme, detail, parsed)} {_FIX}") from None
    except RuntimeError as exc:  # Optuna's schema-version check
        raise StorageError(
            f"{where} holds an Optuna schema of another version ({first_line(exc)}): "
            f"run `optuna storage upgrade --storage URL`"
        ) from None


def _open_hint(scheme: str, detail: str, parsed: Any) -> str:
    """The fix for an error opening a database, from the driver's text (the right fix, not a generic one)."""
    low = detail.lower()
    fix = permanent_fix(low)
    if fix is not None:
        return fix
    if "locked" in low:
        return "another process holds it locked: wait for it to finish, or use another file;"
    if "permission denied" in low:
        return "it is not readable or writable: fix the permissions of the file and its directory;"
    if scheme == "sqlite":
        return "does its directory exist?"
    if "role" in low and "does not exist" in low:
        return f"no such user: create the role (createuser {parsed.username}) or fix the user in the URL;"
    if "no password supplied" in low:
        return "the server asks for a password: add it to the URL (or ~/.pgpass);"
    if "database" in low and "does not exist" in low:
        return f"create it (createdb {parsed.database}) or fix the URL;"
    return "is the server running and the URL right?"


def _check_file(path: str | None, what: str, create: bool) -> None:
    """A storage file that cannot be one (a folder), or a missing one when nothing may be created."""
    if not path or path == ":memory:" or path.startswith("file:"):  # in memory, or an SQLite URI: SQLite checks
        return
    p = Path(path)
    if p.is_dir():
        raise StorageError(f"{what} {path} is a directory: name a file in it (e.g. {p / 'hpo.db'}); {_FIX}")
    if not create and not p.exists():
        raise StorageError(
            f"{what} {path} does not exist (this command only reads, and creates none): "
            f"check the path, or run `hpo run` to create it; {_FIX}"
        )


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


@contextmanager
def _sqlite_schema_lock(database: str) -> Iterator[None]:
    """Hold the SQLite file's lock (the one `hpo.locks` takes for its studies) while Optuna creates its tables.

    Workers started together on a new file raced to create the schema: one failed with `UNIQUE constraint
    failed: alembic_version.version_num` (seen here, two `hpo run` started at once by a benchmark).
    """
    with file_lock(database + LOCK_SUFFIX, "storage lock"):
        yield


def _open_journal(url: str, create: bool = True) -> JournalStorage:
    # Same convention as SQLite URLs: journal:///rel.log is relative to the cwd, journal:////abs.log absolute.
    path = url[len(JOURNAL_PREFIX) :]
    if not path:
        raise StorageError(f"journal URL {url!r} names no file: use journal:///FILE.log (or journal:////ABS/FILE.log)")
    _check_file(path, "journal file", create)
    try:
        # Reads the whole journal: a line that is not one of Optuna's log records fails here, not mid-run.
        return JournalStorage(JournalFileBackend(path))
    except OSError as exc:
        raise StorageError(
            f"cannot open journal file {path} ({exc.strerror}): does its directory exist and is it writable? {_FIX}"
        ) from None
    except (ValueError, TypeError, KeyError, AssertionError, AttributeError, IndexError) as exc:
        # json.JSONDecodeError and UnicodeDecodeError are ValueErrors; the others come from replaying a record
        # of the wrong shape.
        kind = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else type(exc).__name__
        raise StorageError(
            f"journal file {path} is not an Optuna journal or is corrupt ({kind}): restore it from a backup, "
            f"or give another file; {_FIX}"
        ) from None
