"""Storage resolution: URL order, masking, opening each kind, errors, reaping, DB outages.

See docs/ARCHITECTURE.md, "Storage".
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psycopg
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState

from hpo.dbretry import PING_AFTER_IDLE_S
from hpo.errors import StorageError
from hpo.locks import study_lock
from hpo.optuna_private import backend_of
from hpo.reaper import reap_stale
from hpo.storage import DEFAULT_URL, mask_url, open_storage, resolve_url
from hpo.worker import run_worker
from model.errors import UsageError

PROXY = Path(__file__).parent / "workers" / "tcp_proxy.py"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://alice:s3cret@db.example:5432/hpo", "postgresql+psycopg://alice:***@db.example:5432/hpo"),
        ("postgresql://alice:p@ss:w/rd@db:5432/hpo", "postgresql://alice:***@db:5432/hpo"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (
            "postgresql+psycopg://alice@db/hpo?password=s3cret&sslmode=require",
            "postgresql+psycopg://alice@db/hpo?password=***&sslmode=require",
        ),
        ("postgresql+psycopg://root@127.0.0.1:5432/hpo", "postgresql+psycopg://root@127.0.0.1:5432/hpo"),
        ("sqlite:///hpo.db", "sqlite:///hpo.db"),
        ("sqlite:////tmp/a:b@c.db", "sqlite:////tmp/a:b@c.db"),
        ("journal:///runs/hpo.log", "journal:///runs/hpo.log"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url) and "p@ss" not in mask_url(url)


def test_resolve_url_prefers_flag_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    assert resolve_url(None) == DEFAULT_URL == "sqlite:///hpo.db"
    monkeypatch.setenv("HPO_STORAGE", "journal:///env.log")
    assert resolve_url(None) == "journal:///env.log"
    assert resolve_url("") == "journal:///env.log"  # an empty flag is no flag
    assert resolve_url("sqlite:///flag.db") == "sqlite:///flag.db"
    monkeypatch.setenv("HPO_STORAGE", "  ")
    assert resolve_url(None) == DEFAULT_URL


def test_open_storage_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    sqlite = open_storage("sqlite:///rel.db")
    assert isinstance(sqlite, RDBStorage) and (tmp_path / "rel.db").exists()
    assert sqlite.get_heartbeat_interval() == 10 and sqlite.grace_period == 30
    assert sqlite.heartbeat_stale_trial_callback is not None
    assert open_storage("sqlite:///rel.db", heartbeat=False).get_heartbeat_interval() is None
    journal = open_storage("journal:///rel.log")  # relative to the cwd, like SQLite URLs
    assert isinstance(journal, JournalStorage) and (tmp_path / "rel.log").exists()
    absolute = tmp_path / "sub" / "abs.log"
    absolute.parent.mkdir()
    assert isinstance(open_storage(f"journal:///{absolute}"), JournalStorage) and absolute.exists()
    study = optuna.create_study(storage=journal, study_name="s")
    assert optuna.load_study(study_name="s", storage=open_storage("journal:///rel.log")).study_name == study.study_name


def test_heartbeat_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("HPO_HEARTBEAT_GRACE", "3")
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}")
    assert isinstance(storage, RDBStorage)
    assert (storage.get_heartbeat_interval(), storage.grace_period) == (1, 3)


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("HPO_HEARTBEAT_INTERVAL", "soon", "HPO_HEARTBEAT_INTERVAL must be a whole number"),
        ("HPO_HEARTBEAT_GRACE", "0", "HPO_HEARTBEAT_GRACE must be a whole number"),
        ("HPO_HEARTBEAT_GRACE", "5", "must exceed HPO_HEARTBEAT_INTERVAL"),
    ],
)
def test_bad_heartbeat_env_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str
) -> None:
    monkeypatch.setenv("HPO_HEARTBEAT_INTERVAL", "10")
    monkeypatch.setenv(env, value)
    with pytest.raises(StorageError, match=needle) as info:
        open_storage(f"sqlite:///{tmp_path / 'h.db'}")
    assert isinstance(info.value, UsageError) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("mysql://u:s3cret@db/x", "unknown storage URL 'mysql://u:***@db/x'"),
        ("hpo.db", "unknown storage URL 'hpo.db'"),
        ("journal:///", "names no file"),
        ("journal:///no/such/dir/hpo.log", "cannot open journal file no/such/dir/hpo.log"),
        ("sqlite:///no/such/dir/hpo.db", "cannot open SQLite file no/such/dir/hpo.db"),
    ],
)
def test_bad_urls_are_one_line_usage_errors(
    url: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as info:
        open_storage(url)
    message = str(info.value)
    assert needle in message and "\n" not in message and "s3cret" not in message
    assert "--storage" in message or "journal:///FILE.log" in message


def test_unreachable_postgres_names_host_and_fix_not_password() -> None:
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_storage("postgresql+psycopg://alice:s3cret@127.0.0.1:5999/hpo")
    message = str(info.value)
    assert message.startswith("cannot open PostgreSQL at 127.0.0.1:5999")
    assert "is the server running" in message and "HPO_STORAGE" in message
    assert "s3cret" not in message and "\n" not in message
    assert time.monotonic() - started < 10  # refused at once, no retry loop on open


@pytest.mark.postgres
def test_missing_postgres_database_says_how_to_create_it(pg_url: str) -> None:
    with pytest.raises(StorageError) as info:
        open_storage(pg_url.rsplit("/", 1)[0] + "/hpo_no_such_db")
    assert "create it (createdb hpo_no_such_db) or fix the URL" in str(info.value)


def _terminate_backends(pg_url: str) -> None:
    """Kill every server connection to the test database (what a server restart does to a pool)."""
    database = pg_url.rsplit("/", 1)[1]
    admin_url = pg_url.replace("postgresql+psycopg", "postgresql").rsplit("/", 1)[0] + "/test"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )


@pytest.mark.postgres
def test_postgres_pool_pings_an_idle_connection_and_replaces_a_dead_one(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    study = optuna.create_study(storage=open_storage(pg_url), study_name="pg")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    _terminate_backends(pg_url)
    time.sleep(PING_AFTER_IDLE_S + 0.2)
    with caplog.at_level("WARNING", logger="hpo.dbretry"):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(study.trials) == 2
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # the ping found it, not a statement
    # Used again within the idle threshold, a connection is not pinged: its statement fails and the call is retried.
    _terminate_backends(pg_url)
    with caplog.at_level("WARNING", logger="hpo.dbretry"):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(study.trials) == 3
    assert [r for r in caplog.records if "retrying" in r.getMessage()]


@pytest.mark.postgres
def test_postgres_worker_reuses_its_pooled_connections(pg_url: str) -> None:
    # A claim holds three connections at once (the study lock, the main thread's, the heartbeat's first beat):
    # a pool of two opened (and closed) a new server connection for every trial, ~1/5 of our per-trial overhead.
    study = optuna.create_study(storage=open_storage(pg_url), study_name="pool")
    space = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}

    def objective(trial: optuna.Trial) -> float:
        for step in range(3):
            trial.report(float(step), step)
        return 1.0

    run_worker(study, objective, 1, distributions=space)  # warm-up: the pool fills
    connects: list[object] = []
    sqlalchemy.event.listen(backend_of(study).engine, "connect", lambda *args: connects.append(args))
    run_worker(study, objective, 6, distributions=space)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6
    assert connects == []


@pytest.mark.postgres
def test_postgres_storage_opens_and_takes_a_bare_url(pg_url: str) -> None:
    storage = open_storage(pg_url)
    assert isinstance(storage, RDBStorage)
    study = optuna.create_study(storage=storage, study_name="pg")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="pg", storage=open_storage(pg_url)).trials) == 2
    # a bare postgresql:// URL gets the psycopg 3 driver
    assert isinstance(open_storage(pg_url.replace("postgresql+psycopg://", "postgresql://")), RDBStorage)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reap_stale_journal_fails_dead_pids_and_requeues_once(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"journal:///{tmp_path / 'j.log'}"), study_name="j")
    host = socket.gethostname()
    trials = []
    for pid, where in ((_dead_pid(), host), (os.getppid(), host), (_dead_pid(), "other-host")):
        t = study.ask()
        t.suggest_float("x", 0, 1)
        t.set_user_attr("worker", {"host": where, "pid": pid})
        trials.append(t)
    assert reap_stale(study) == 1
    dead, alive, elsewhere = (study.trials[t.number] for t in trials)
    assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"].startswith("worker gone")
    assert alive.state == TrialState.RUNNING and elsewhere.state == TrialState.RUNNING  # live, or not ours to judge
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs["retry_of"] == dead.number
    assert waiting.system_attrs["fixed_params"] == dead.params
    assert reap_stale(study) == 0  # nothing more to reap

    # A retry whose worker dies too is failed but not queued again.
    retry = study.ask()
    assert retry.suggest_float("x", 0, 1) == dead.params["x"]
    retry.set_user_attr("worker", {"host": host, "pid": _dead_pid()})
    assert reap_stale(study) == 1
    assert study.get_trials(states=(TrialState.WAITING,)) == []


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_reap_stale_rdb_fails_and_requeues_under_the_study_lock(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Optuna fails a stale trial and only then queues its retry. A claim between the two saw a free slot and no
    # WAITING trial, sampled a new one, and the retry was left WAITING past the budget (a CI failure). So the
    # reap holds the lock that claims take: while another holder has it, the trial stays RUNNING, unqueued.
    monkeypatch.setenv("HPO_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("HPO_HEARTBEAT_GRACE", "2")
    url = f"sqlite:///{tmp_path / 'r.db'}" if kind == "sqlite" else str(request.getfixturevalue("pg_url"))
    storage = open_storage(url)
    assert isinstance(storage, RDBStorage)
    study = optuna.create_study(storage=storage, study_name="r")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # past the grace period (SQLite keeps whole seconds): stale
    reaped: list[int] = []
    with study_lock(study):
        reaper = threading.Thread(target=lambda: reaped.append(reap_stale(study)))
        reaper.start()
        reaper.join(1.5)
        assert reaper.is_alive() and reaped == []  # blocked on the lock
        assert study.trials[trial.number].state == TrialState.RUNNING
        assert study.get_trials(states=(TrialState.WAITING,)) == []
    reaper.join(30)
    assert reaped == [1]
    assert study.trials[trial.number].state == TrialState.FAIL
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.system_attrs["retry_history"] == [trial.number]
    assert waiting.params == study.trials[trial.number].params


def _start_proxy(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(PROXY), str(port), "127.0.0.1", "5432"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_database_outage_is_retried_then_a_storage_error(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")
    proxies = [_start_proxy(port)]
    try:
        study = optuna.create_study(storage=open_storage(url), study_name="outage")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)

        # The server restarts while a call waits: the call goes through once it is back.
        monkeypatch.setenv("HPO_DB_RETRY_SECONDS", "20")
        proxies[-1].kill()
        proxies[-1].wait()
        restart = threading.Timer(1.0, lambda: proxies.append(_start_proxy(port)))
        restart.start()
        started = time.monotonic()
        assert len(study.get_trials()) == 1
        assert time.monotonic() - started >= 0.9
        restart.join()

        # It stays down: the call gives up after the window with one line naming the database.
        monkeypatch.setenv("HPO_DB_RETRY_SECONDS", "1")
        proxies[-1].kill()
        proxies[-1].wait()
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            study.tell(study.ask(), 1.0)
        assert 0.9 <= time.monotonic() - started < 10
        message = str(info.value)
        assert f"lost PostgreSQL at 127.0.0.1:{port}" in message and "\n" not in message
        assert "finished trials are kept" in message
    finally:
        for proxy in proxies:
            proxy.kill()
            proxy.wait()


_OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from hpo.storage import open_storage
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
open_storage(sys.argv[1])
"""


def test_workers_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Optuna creates the schema without a lock: two `hpo run` started together on a new file raced, and one
    failed (`UNIQUE constraint failed: alembic_version.version_num`). The file's lock serialises the creation."""
    url, go = f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, url, str(go)], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    time.sleep(3)  # every process has imported what it needs and waits
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
