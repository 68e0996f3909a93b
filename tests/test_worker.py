"""The worker loop: global budget, failures, polling, signals, dead workers, lost connections.

In-process tests drive `run_worker` on tiny objectives; the multi-process ones start real workers
(tests/workers/cheap_worker.py) on SQLite, journal and PostgreSQL storages.

See docs/ARCHITECTURE.md, "The worker protocol".
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import optuna
import psycopg
import pytest
import sqlalchemy
from optuna.trial import TrialState
from support import CheapWorker

from hpo.budget import _confirm_claim, budget_counts, claim_trial
from hpo.optuna_private import backend_of
from hpo.reaper import worker_of
from hpo.signals import WorkerInterrupted
from hpo.storage import open_storage
from hpo.worker import run_worker
from model.errors import DivergedError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _study(url: str = "", name: str = "s") -> optuna.Study:
    storage = open_storage(url) if url else None
    return optuna.create_study(storage=storage, study_name=name, sampler=optuna.samplers.RandomSampler(seed=0))


def _quadratic(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1, 1) ** 2


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=FINISHED)


# ---------------------------------------------------------------- in-process


# study.ask() on a storage with a heartbeat: Optuna warns that heartbeats are meant for Study.optimize (the
# worker silences it where it runs the heartbeat itself, hpo.budget); this test makes trials by hand.
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_budget_counts_by_state_match_the_trials(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # On PostgreSQL the counts come from one GROUP BY, not from loading the trials: both must agree, per study.
    url = f"sqlite:///{tmp_path / 'c.db'}" if kind == "sqlite" else str(request.getfixturevalue("pg_url"))
    study, other = _study(url), _study(url, name="other")
    other.enqueue_trial({"x": 0.5})
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        trial = study.ask()
        study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    study.ask()  # RUNNING
    study.enqueue_trial({"x": 0.1})  # WAITING
    expected = {"complete": 2, "pruned": 1, "fail": 1, "running": 1, "waiting": 1}
    assert budget_counts(study) == expected
    assert budget_counts(other) == {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "waiting": 1}


def test_fail_does_not_consume_budget(tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path / 'b.db'}")
    calls = {"n": 0}

    def objective(trial: optuna.Trial) -> float:
        calls["n"] += 1
        x = trial.suggest_float("x", -1, 1)
        if calls["n"] % 2 == 0:
            raise RuntimeError("flaky\nsecond line")
        if calls["n"] == 3:
            raise DivergedError(epoch=1, loss=float("nan"))
        return x * x

    result = run_worker(study, objective, 3)
    counts = budget_counts(study)
    assert (counts["complete"], counts["running"], counts["waiting"]) == (3, 0, 0)
    assert counts["fail"] == result.failed == 4
    assert (result.trials_run, result.complete, result.stopped) == (7, 3, "budget")
    reasons = [t.user_attrs["fail_reason"] for t in study.get_trials(states=(TrialState.FAIL,))]
    flaky = "RuntimeError: flaky"  # one line, whatever the exception's text
    assert reasons == [flaky, "training diverged at epoch 1: loss is nan", flaky, flaky]
    for t in study.trials:
        assert t.user_attrs["worker"] == {"host": socket.gethostname(), "pid": os.getpid()}


def test_pruned_counts_toward_the_budget_and_bad_values_fail() -> None:
    study = _study()
    outcomes: list[Callable[[], float]] = [
        lambda: float("nan"),
        lambda: (_ for _ in ()).throw(optuna.TrialPruned()),
        lambda: 1.0,
    ]

    def objective(trial: optuna.Trial) -> float:
        trial.report(0.5, 0)
        return outcomes.pop(0)() if outcomes else 2.0

    result = run_worker(study, objective, 2)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.PRUNED, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["fail_reason"] == "objective returned nan"
    assert (result.complete, result.pruned, result.failed) == (1, 1, 1)


def test_claim_stops_at_the_budget_counting_running_trials() -> None:
    study = _study()
    first = claim_trial(study, 2)
    second = claim_trial(study, 2)
    assert first is not None and second is not None
    assert claim_trial(study, 2) is None  # two RUNNING trials hold both slots
    study.tell(first, state=TrialState.FAIL)
    third = claim_trial(study, 2)  # a FAIL frees its slot
    assert third is not None and third.number == 2


def test_waiting_worker_takes_a_slot_freed_by_a_failure() -> None:
    study = _study()
    elsewhere = claim_trial(study, 2)  # another worker's trial, still running
    assert elsewhere is not None
    threading.Timer(0.5, lambda: study.tell(elsewhere, state=TrialState.FAIL)).start()
    started = time.monotonic()
    result = run_worker(study, _quadratic, 2, poll_interval=0.05)
    assert time.monotonic() - started >= 0.45  # it polled until the other trial failed
    assert (result.complete, result.stopped) == (2, "budget")
    assert budget_counts(study)["complete"] == 2


def test_timeout_stops_a_polling_worker() -> None:
    study = _study()
    assert claim_trial(study, 1) is not None  # runs "elsewhere" forever
    started = time.monotonic()
    result = run_worker(study, _quadratic, 1, timeout=0.3, poll_interval=0.05)
    assert result.stopped == "timeout" and result.trials_run == 0
    assert 0.25 <= time.monotonic() - started < 2


def test_timeout_is_checked_between_trials() -> None:
    study = _study()
    result = run_worker(study, lambda t: time.sleep(0.2) or _quadratic(t), 100, timeout=0.3)
    assert result.stopped == "timeout" and result.trials_run == 2  # the second trial is not cut short
    assert budget_counts(study)["complete"] == 2


def test_consecutive_failures_stop_the_worker() -> None:
    def broken(trial: optuna.Trial) -> float:
        raise FileNotFoundError("data/train missing")

    result = run_worker(_study(), broken, 5, max_consecutive_failures=3)
    assert (result.trials_run, result.failed, result.stopped) == (3, 3, "failures")


def test_sampler_runs_under_the_claim_with_distributions() -> None:
    study = _study()
    space = {"x": optuna.distributions.FloatDistribution(-1, 1)}
    trial = claim_trial(study, 1, distributions=space)
    assert trial is not None and set(trial.params) == {"x"}  # published before the objective runs
    assert trial.suggest_float("x", -1, 1) == trial.params["x"]


def test_interrupt_fails_and_requeues_the_running_trial() -> None:
    study = _study()

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -1, 1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        return 0.0

    before = signal.getsignal(signal.SIGINT)
    started = time.monotonic()
    with pytest.raises(WorkerInterrupted) as info:
        run_worker(study, objective, 3)
    assert time.monotonic() - started < 4 and info.value.exit_code == 130
    failed, waiting = study.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "interrupted"
    assert waiting.state == TrialState.WAITING and waiting.user_attrs["retry_of"] == failed.number
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    result = run_worker(study, _quadratic, 1)
    (retry,) = _finished(study)
    assert result.complete == 1 and retry.params == failed.params


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_interrupt_landing_in_a_database_call_is_raised_once_it_returns(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Raised inside a driver call, the interrupt left the connection mid-command (SQLAlchemy logged a traceback
    resetting it; Optuna could report a storage error): it must wait until the call has returned."""
    study = _study(pg_url)
    statements: dict[str, int | None] = {"n": None}

    def signal_mid_statement(*args: object) -> None:
        n = statements["n"]
        if n is not None and threading.current_thread() is threading.main_thread():
            statements["n"] = n + 1
            if n == 5:
                os.kill(os.getpid(), signal.SIGTERM)  # its handler runs inside SQLAlchemy's execute

    sqlalchemy.event.listen(backend_of(study).engine, "before_cursor_execute", signal_mid_statement)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -1, 1)
        statements["n"] = 0
        for epoch in range(1000):
            trial.report(float(epoch), epoch)
            time.sleep(0.01)  # training
        return 0.0

    started = time.monotonic()
    with pytest.raises(WorkerInterrupted) as info:
        run_worker(study, objective, 1)
    assert info.value.exit_code == 143 and time.monotonic() - started < 5
    modules = [str(f.f_globals.get("__name__")) for f, _ in traceback.walk_tb(info.value.__traceback__)]
    assert not [m for m in modules if m.startswith(("sqlalchemy", "psycopg", "optuna.storages"))], modules
    assert [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy")] == []
    failed, waiting = study.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "interrupted"
    assert waiting.state == TrialState.WAITING and waiting.system_attrs["fixed_params"] == failed.params
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL  # the re-check timer left with the worker


def test_lost_lock_gives_back_an_overdrawn_slot() -> None:
    study = _study()
    mine, theirs = claim_trial(study, 2), claim_trial(study, 2)
    assert mine is not None and theirs is not None
    assert _confirm_claim(study, 2, theirs) is theirs  # within the budget: kept
    extra = study.ask()  # as if a worker claimed while our lock's connection was gone
    assert _confirm_claim(study, 2, extra) is None
    given_back = study.trials[extra.number]
    assert given_back.state == TrialState.FAIL and "lock was lost" in given_back.user_attrs["fail_reason"]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_result_of_a_trial_reaped_while_running_is_kept() -> None:
    study = _study()

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -1, 1)
        trial.report(0.25, 0)
        # Another worker took this trial for dead (heartbeats lost in an outage): FAIL, retry queued.
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        frozen = study._storage.get_trial(trial._trial_id)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, frozen)
        return 0.5

    result = run_worker(study, objective, 1)
    reaped, retry, kept = study.trials
    assert reaped.state == TrialState.FAIL
    assert retry.state == TrialState.FAIL and retry.user_attrs["fail_reason"].startswith("superseded")
    assert kept.state == TrialState.COMPLETE and kept.value == 0.5 and kept.params == reaped.params
    assert kept.user_attrs["recovered_from"] == reaped.number and kept.intermediate_values == {0: 0.25}
    assert (result.complete, result.stopped) == (1, "budget")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_result_of_a_reaped_trial_whose_retry_started_is_not_doubled() -> None:
    study = _study()

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -1, 1)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study._storage.get_trial(trial._trial_id))
        study.ask()  # another worker took the retry
        return 0.5

    result = run_worker(study, objective, 1, timeout=0.3, poll_interval=0.05)
    reaped, retry = study.trials
    assert (reaped.state, retry.state) == (TrialState.FAIL, TrialState.RUNNING)
    assert retry.params == reaped.params and result.failed == 1 and result.stopped == "timeout"


def test_sampler_error_in_the_claim_leaves_no_running_trial() -> None:
    study = _study()
    study.optimize(_quadratic, n_trials=1)
    clash = {"x": optuna.distributions.CategoricalDistribution(["a", "b"])}  # x was a float
    with pytest.raises(ValueError):
        claim_trial(study, 5, distributions=clash)
    last = study.trials[-1]
    assert last.state == TrialState.FAIL and last.user_attrs["fail_reason"].startswith("sampler: ValueError")


# ---------------------------------------------------------------- real worker processes


def _new_study(url: str) -> optuna.Study:
    return optuna.create_study(storage=open_storage(url), study_name="s", direction="minimize")


def _assert_study_done(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    counts = budget_counts(study)
    assert counts["complete"] + counts["pruned"] == n, counts
    assert counts["running"] == 0, counts
    finished = _finished(study)
    keys = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(keys)) == len(keys), "two finished trials with identical params"
    return finished


def _start_together(tmp: Path, url: str, n_workers: int, n_trials: int, *opts: str) -> list[CheapWorker]:
    """Workers that begin claiming at the same instant (after their imports), to make claims collide."""
    go = tmp / "go"
    workers = [CheapWorker(tmp, f"w{i}", url, n_trials, i, "--go", str(go), *opts) for i in range(n_workers)]
    for w in workers:
        w.wait_for("ready")
    go.touch()
    return workers


def _url(kind: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    if kind == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return {"sqlite": f"sqlite:///{tmp / 'hpo.db'}", "journal": f"journal:///{tmp / 'hpo.log'}"}[kind]


def _run_together(
    kind: str, tmp: Path, request: pytest.FixtureRequest, n_workers: int, n_trials: int, *opts: str
) -> tuple[optuna.Study, list[CheapWorker]]:
    """A fresh study on storage `kind`, and workers started together on it (`_start_together`) that all exit 0."""
    url = _url(kind, tmp, request)
    study = _new_study(url)
    workers = _start_together(tmp, url, n_workers, n_trials, *opts)
    assert [w.finish() for w in workers] == [0] * n_workers
    return study, workers


KINDS = ["sqlite", "journal", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_three_workers_share_the_budget_exactly(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    study, workers = _run_together(kind, tmp_path, request, 3, 9, "--epochs", "3", "--epoch-seconds", "0.1")
    finished = _assert_study_done(study, 9)
    ends = [line for w in workers for line in w.lines() if line.startswith("end ") and " FAIL " not in line]
    assert len(ends) == 9  # every worker stopped at the shared budget: no overshoot
    assert len({worker_of(t)[1] for t in finished}) >= 2  # they did run side by side
    if kind == "sqlite":
        assert any("more than one worker process" in w.err.read_text() for w in workers)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_colliding_claims_never_overdraw_the_budget(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    study, _ = _run_together(kind, tmp_path, request, 4, 2, "--epochs", "2", "--epoch-seconds", "0.1")
    _assert_study_done(study, 2)
    assert len(study.trials) == 2  # no trial was even created beyond the budget


@pytest.mark.slow
@pytest.mark.postgres
def test_killed_worker_trial_fails_by_heartbeat_and_is_retried(
    pg_url: str, tmp_path: Path, fast_heartbeat: dict[str, str]
) -> None:
    _check_kill_is_recovered(pg_url, tmp_path)


@pytest.mark.slow
def test_killed_worker_on_journal_is_reaped_by_host_and_pid(tmp_path: Path) -> None:
    _check_kill_is_recovered(f"journal:///{tmp_path / 'hpo.log'}", tmp_path)


def _check_kill_is_recovered(url: str, tmp: Path) -> None:
    study = _new_study(url)
    opts = ("--epochs", "5", "--epoch-seconds", "0.1", "--poll", "0.2")
    victim = CheapWorker(tmp, "victim", url, 4, 0, *opts)
    number = int(victim.wait_for("start ").split()[1])
    time.sleep(0.2)
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.proc.wait(10) == -signal.SIGKILL
    survivor = CheapWorker(tmp, "survivor", url, 4, 1, *opts)
    assert survivor.finish() == 0
    _assert_study_done(study, 4)
    killed = study.trials[number]
    assert killed.state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.number != number and t.params == killed.params]
    assert retry.state in FINISHED and worker_of(retry)[1] == survivor.proc.pid
    assert budget_counts(study)["fail"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_fails_the_trial_requeues_it_and_exits(signum: int, code: int, tmp_path: Path) -> None:
    url = f"journal:///{tmp_path / 'hpo.log'}"
    study = _new_study(url)
    worker = CheapWorker(tmp_path, "w", url, 1, 0, "--epochs", "50", "--epoch-seconds", "0.1")
    number = int(worker.wait_for("start ").split()[1])
    time.sleep(0.3)
    worker.proc.send_signal(signum)
    assert worker.finish(10) == code
    assert f"interrupted {code}" in worker.lines()
    failed = study.trials[number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "interrupted"
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs["retry_of"] == number
    assert CheapWorker(tmp_path, "again", url, 1, 1, "--epochs", "2").finish() == 0
    (retry,) = _finished(study)
    assert retry.params == failed.params and retry.user_attrs["retry_of"] == number


@pytest.mark.slow
@pytest.mark.postgres
def test_terminated_connections_lose_no_finished_trial(
    pg_url: str, tmp_path: Path, fast_heartbeat: dict[str, str]
) -> None:
    study = _new_study(pg_url)
    database = pg_url.rsplit("/", 1)[1]
    workers = _start_together(tmp_path, pg_url, 3, 9, "--epochs", "4", "--epoch-seconds", "0.1")
    killed = 0
    with psycopg.connect(
        pg_url.replace("postgresql+psycopg", "postgresql").replace(database, "test"), autocommit=True
    ) as admin:
        for _ in range(12):
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchall()
            killed += len(rows)
            time.sleep(0.15)
    assert [w.finish() for w in workers] == [0, 0, 0]
    assert killed > 0
    finished = {t.number: t for t in _assert_study_done(study, 9)}
    reported = [line.split() for w in workers for line in w.lines() if line.startswith("end ")]
    for _, number, state, value in reported:
        if state != "FAIL":  # what a worker saw finish is in the study, with its value
            assert finished[int(number)].state.name == state
            assert finished[int(number)].value == pytest.approx(float(value))


@pytest.mark.parametrize("kind", KINDS)
def test_every_trial_records_its_worker_also_when_it_fails_at_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The attr is written with the new trial (a template), so also a trial that fails at once has it.
    study = _study(_url(kind, tmp_path, request))
    calls = {"n": 0}

    def objective(trial: optuna.Trial) -> float:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("at once")
        return trial.suggest_float("x", -1, 1)

    started = datetime.datetime.now()
    run_worker(study, objective, 2)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(worker_of(t) == (socket.gethostname(), os.getpid()) for t in study.trials)
    for t in study.trials:  # the trial is created from a template: its start time is the storage's usual one
        assert t.datetime_start is not None and t.datetime_complete is not None
        assert started - datetime.timedelta(seconds=1) <= t.datetime_start <= t.datetime_complete
