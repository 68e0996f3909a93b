"""Helpers shared by the tests and bench/bench_storage.py: a scratch PostgreSQL database, a cheap worker process,
and for the tests, `hpo` run in-process with its usage errors checked.

Not a test module and free of pytest, so that the bench can import it too (it puts tests/ on sys.path).
"""

from __future__ import annotations

import getpass
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

CHEAP_WORKER = Path(__file__).parent / "workers" / "cheap_worker.py"


def _admin_connection(host: str, port: int, admin_dbs: tuple[str, ...]) -> tuple[psycopg.Connection, str] | None:
    """A connection to the first of `admin_dbs` that lets it in, as the OS user or `postgres`, with that user."""
    for user in dict.fromkeys((getpass.getuser(), "postgres")):
        for db in admin_dbs:
            try:
                conn = psycopg.connect(host=host, port=port, user=user, dbname=db, connect_timeout=3, autocommit=True)
            except psycopg.OperationalError:
                continue
            return conn, user
    return None


@contextmanager
def scratch_database(host: str, port: int, prefix: str, admin_dbs: tuple[str, ...] = ("test",)) -> Iterator[str | None]:
    """`postgresql+psycopg://USER@HOST:PORT/<prefix><random>`, dropped (FORCE) at the end; None when no server answers.

    Created through the first of `admin_dbs` it may connect to, as the OS user or `postgres` (trust or ~/.pgpass).
    """
    found = _admin_connection(host, port, admin_dbs)
    if found is None:
        yield None
        return
    admin, user = found
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class CheapWorker:
    """tests/workers/cheap_worker.py on `study` in its own process; its stdout and stderr go to files read here."""

    def __init__(
        self,
        tmp: Path,
        tag: str,
        url: str,
        n_trials: int,
        seed: int,
        *opts: str,
        study: str = "s",
        env: dict[str, str] | None = None,
    ) -> None:
        self.out, self.err = tmp / f"{tag}.out", tmp / f"{tag}.err"
        cmd = [sys.executable, str(CHEAP_WORKER), url, study, str(n_trials), "--seed", str(seed), *opts]
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(cmd, cwd=tmp, stdout=out, stderr=err, env=env)

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def wait_for(self, prefix: str, timeout: float = 30) -> str:
        """The first stdout line starting with `prefix` (event lines: "ready", "start N", "end N STATE", ...)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {prefix!r} line; stdout {self.lines()}; stderr {self.err.read_text()[-2000:]}")

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"worker hung; stdout {self.lines()}; stderr {self.err.read_text()[-2000:]}") from None


def cli(capsys, *argv: object) -> tuple[int, str, str]:
    """`hpo ARGV...` in this process (arguments str()-ed): exit code, stdout, stderr (`capsys`, pytest's fixture)."""
    from hpo.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code: int, err: str, *needles: str) -> None:
    """Exit 2 with one `error: ...` line on stderr, no traceback, holding every needle."""
    assert code == 2, f"exit {code}, not 2; stderr {err!r}"  # messages: pytest does not rewrite asserts here
    # What a terminal shows: a progress bar that closed (tqdm, leave=False) rewrote its own line with "\r".
    shown = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
    lines = [line for line in shown if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
