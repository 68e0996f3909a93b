"""A reply lost after the database committed a write: every write the retrying storage repeats is safe to repeat.

Fault injection around `RetryingRDBStorage`: the underlying RDBStorage call runs and commits, then the commit's
reply is "lost" (an OperationalError, as a dropped connection raises it), and the retry must find the write
already done and return what the first call would have. On SQLite and on the real PostgreSQL server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpo.budget import claim_trial
from hpo.dbretry import CREATE_ID_ATTR, RetryingRDBStorage
from hpo.storage import open_storage


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HPO_DB_RETRY_SECONDS", "10")
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lost.db'}"
    return str(request.getfixturevalue("pg_url"))


@contextmanager
def lost_reply(storage: RDBStorage, name: str) -> Iterator[dict[str, int]]:
    """The first call of RDBStorage.`name` commits, then the reply to its COMMIT is lost (once).

    The driver's own OperationalError is raised right after the driver committed, as a connection cut between
    the server's commit and its reply raises it; SQLAlchemy and Optuna handle it as they would the real one.
    """
    original = getattr(RDBStorage, name)
    dialect = storage.engine.dialect
    commit = dialect.do_commit
    state = {"armed": 0, "lost": 0, "calls": 0}

    def do_commit(dbapi_connection: Any) -> None:
        commit(dbapi_connection)
        if state["armed"]:
            state["armed"], state["lost"] = 0, state["lost"] + 1
            raise dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly")

    def wrapped(self: RDBStorage, *args: Any, **kwargs: Any) -> Any:
        state["calls"] += 1
        state["armed"] = int(state["lost"] == 0)
        try:
            return original(self, *args, **kwargs)
        finally:
            state["armed"] = 0

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dialect, "do_commit", do_commit)
        mp.setattr(RDBStorage, name, wrapped)
        yield state


def _storage(url: str) -> RetryingRDBStorage:
    storage = open_storage(url, heartbeat=False)
    assert isinstance(storage, RetryingRDBStorage)
    return storage


def _study(storage: RetryingRDBStorage) -> int:
    return storage.create_new_study([StudyDirection.MAXIMIZE], "s")


def _trials(storage: RetryingRDBStorage, study_id: int) -> list[optuna.trial.FrozenTrial]:
    return storage.get_all_trials(study_id)


DIST = FloatDistribution(0.0, 1.0)


def _running(storage: RetryingRDBStorage) -> tuple[int, int]:
    sid = _study(storage)
    return sid, storage.create_new_trial(sid)


# Each case: the RDBStorage method that loses its reply once, and the calls through the retrying storage.
CASES: dict[str, tuple[str, Callable[[RetryingRDBStorage], None]]] = {}


def case(name: str, method: str) -> Callable[[Callable[[RetryingRDBStorage], None]], None]:
    def add(fn: Callable[[RetryingRDBStorage], None]) -> None:
        CASES[name] = (method, fn)

    return add


@case("create_new_study", "create_new_study")
def _(storage: RetryingRDBStorage) -> None:
    sid = storage.create_new_study([StudyDirection.MAXIMIZE], "s")
    studies = storage.get_all_studies()
    assert [s._study_id for s in studies] == [sid] and studies[0].study_name == "s"


@case("delete_study", "delete_study")
def _(storage: RetryingRDBStorage) -> None:
    sid = _study(storage)
    storage.delete_study(sid)
    assert storage.get_all_studies() == []


@case("set_study_user_attr", "set_study_user_attr")
def _(storage: RetryingRDBStorage) -> None:
    sid = _study(storage)
    storage.set_study_user_attr(sid, "k", [1, 2])
    assert storage.get_study_user_attrs(sid) == {"k": [1, 2]}


@case("set_study_system_attr", "set_study_system_attr")
def _(storage: RetryingRDBStorage) -> None:
    sid = _study(storage)
    storage.set_study_system_attr(sid, "k", "v")
    assert storage.get_study_system_attrs(sid) == {"k": "v"}


@case("create_new_trial (ask)", "_create_new_trial")
def _(storage: RetryingRDBStorage) -> None:
    sid = _study(storage)
    tid = storage.create_new_trial(sid)
    trials = _trials(storage, sid)
    assert [t._trial_id for t in trials] == [tid] and trials[0].state == TrialState.RUNNING


@case("create_new_trial (enqueue)", "_create_new_trial")
def _(storage: RetryingRDBStorage) -> None:
    sid = _study(storage)
    study = optuna.load_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 0.5}, user_attrs={"enqueued": True})
    trials = _trials(storage, sid)
    assert len(trials) == 1 and trials[0].state == TrialState.WAITING
    assert trials[0].user_attrs == {"enqueued": True} and CREATE_ID_ATTR in trials[0].system_attrs


@case("set_trial_param", "_set_trial_param")
def _(storage: RetryingRDBStorage) -> None:
    sid, tid = _running(storage)
    storage.set_trial_param(tid, "x", 0.25, DIST)
    assert storage.get_trial(tid).params == {"x": 0.25}


@case("set_trial_intermediate_value", "set_trial_intermediate_value")
def _(storage: RetryingRDBStorage) -> None:
    sid, tid = _running(storage)
    storage.set_trial_intermediate_value(tid, 1, 3.5)
    assert storage.get_trial(tid).intermediate_values == {1: 3.5}


@case("set_trial_user_attr", "set_trial_user_attr")
def _(storage: RetryingRDBStorage) -> None:
    sid, tid = _running(storage)
    storage.set_trial_user_attr(tid, "k", {"a": 1})
    assert storage.get_trial(tid).user_attrs == {"k": {"a": 1}}


@case("set_trial_system_attr", "set_trial_system_attr")
def _(storage: RetryingRDBStorage) -> None:
    sid, tid = _running(storage)
    storage.set_trial_system_attr(tid, "k", 7)
    assert storage.get_trial(tid).system_attrs["k"] == 7


@case("finish a trial (COMPLETE)", "set_trial_state_values")
def _(storage: RetryingRDBStorage) -> None:
    sid, tid = _running(storage)
    assert storage.set_trial_state_values(tid, TrialState.COMPLETE, [21.5]) is True
    trial = storage.get_trial(tid)
    assert trial.state == TrialState.COMPLETE and trial.values == [21.5]


@case("finish a trial (FAIL)", "set_trial_state_values")
def _(storage: RetryingRDBStorage) -> None:
    sid, tid = _running(storage)
    assert storage.set_trial_state_values(tid, TrialState.FAIL) is True
    assert storage.get_trial(tid).state == TrialState.FAIL


@case("claim a WAITING trial", "set_trial_state_values")
def _(storage: RetryingRDBStorage) -> None:
    sid = _study(storage)
    study = optuna.load_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 0.5})
    waiting = _trials(storage, sid)[0]
    assert storage.set_trial_state_values(waiting._trial_id, TrialState.RUNNING) is True
    assert storage.get_trial(waiting._trial_id).state == TrialState.RUNNING


@pytest.mark.parametrize("name", list(CASES))
def test_a_write_whose_reply_is_lost_after_its_commit_is_not_repeated(url: str, name: str) -> None:
    method, run = CASES[name]
    storage = _storage(url)
    with lost_reply(storage, method) as fault:
        run(storage)  # each case's own set-up writes use other methods, so the fault hits its write
    assert fault["lost"] == 1, f"the fault never fired for {name}"
    assert fault["calls"] >= 1


def test_a_worker_whose_claim_and_tell_lose_their_replies_runs_the_waiting_trial(url: str) -> None:
    storage = _storage(url)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.enqueue_trial({"x": 0.5}, user_attrs={"enqueued": True})
    with lost_reply(storage, "set_trial_state_values") as fault:
        trial = claim_trial(study, 5)  # pops the WAITING trial: its RUNNING write commits, the reply is lost
    assert fault["lost"] == 1 and trial is not None and trial.number == 0  # not a new trial sampled beside it
    assert trial.suggest_float("x", 0.0, 1.0) == 0.5
    with lost_reply(storage, "set_trial_state_values") as fault:
        study.tell(trial, 20.0)  # finishing again raised UpdateFinishedTrialError
    assert fault["lost"] == 1
    trials = study.get_trials()
    assert [(t.number, t.state, t.value) for t in trials] == [(0, TrialState.COMPLETE, 20.0)]
