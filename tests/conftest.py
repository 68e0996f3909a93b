"""Shared fixtures: a fresh PostgreSQL database per test (`pg_url`), and short heartbeats for worker tests."""

from __future__ import annotations

import getpass
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432


def _admin_connection() -> tuple[psycopg.Connection, str] | None:
    """A psycopg connection to database `test` as the OS user or `postgres`, with the user it used."""
    for user in dict.fromkeys((getpass.getuser(), "postgres")):
        try:
            conn = psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="test", connect_timeout=3, autocommit=True
            )
        except psycopg.OperationalError:
            continue
        return conn, user
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """`postgresql+psycopg://USER@127.0.0.1:5432/hpo_test_<random>`, dropped (FORCE) after the test.

    No server: the test fails when env CI is set (CI has PostgreSQL), else it is skipped.
    """
    found = _admin_connection()
    if found is None:
        message = f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT} (database `test`, user root/postgres)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    conn, user = found
    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Heartbeat every 1 s, stale after 3 s, DB retries for 20 s: for this process and the workers it starts."""
    env = {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_HEARTBEAT_GRACE": "3", "HPO_DB_RETRY_SECONDS": "20"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
