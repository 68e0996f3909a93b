"""Real `hpo run` worker processes on the smoke spec (issue 4): the shared budget with every sampler, a worker
killed -9 or terminated mid-trial, and an unreachable database.

tests/test_worker.py drives the worker loop through tests/workers/cheap_worker.py; these start the command a
person runs, `python -m hpo run --study smoke ...`, so spec loading, study creation by workers that start
together on an empty database, the join index, the objective and the CLI's exit codes are all in the path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpo.budget import budget_counts
from hpo.reaper import worker_of
from hpo.samplers import SAMPLERS
from hpo.storage import open_storage

pytestmark = pytest.mark.slow

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STUDY = "smoke"  # the study name in studies/smoke.toml
LONG_TRIALS = ("--set", "epochs=6")  # trials of a few seconds, so a signal lands mid-trial
_DONE = re.compile(r"^done: (\d+) trials here \((\d+) complete, (\d+) pruned, (\d+) failed; stopped by (\w+)\)")


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HPO_STORAGE", None)
    # One intra-op thread per worker: three workers using every core each oversubscribe a small CPU box
    # (measured on 2 cores: 112 s instead of 19 s for 9 smoke trials).
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HPO_ARTIFACTS": str(tmp / "artifacts")})
    return env


class HpoRun:
    """`python -m hpo run --study smoke ... -q` in its own process; stdout/stderr go to files the test reads."""

    def __init__(self, tmp: Path, tag: str, url: str, n_trials: int, *extra: str) -> None:
        self.tag = tag
        self.out, self.err = tmp / f"{tag}.out", tmp / f"{tag}.err"
        cmd = [sys.executable, "-m", "hpo", "run", "--study", STUDY, "--n-trials", str(n_trials)]
        cmd += ["--storage", url, *extra, "-q"]
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(cmd, cwd=tmp, env=_env(tmp), stdout=out, stderr=err)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        return (
            f"[{self.tag} rc={self.proc.returncode}] stdout: {self.out.read_text()[-1500:]!r} "
            f"stderr: {self.err.read_text()[-3000:]!r}"
        )

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"hpo run hung: {self.logs()}") from None

    def done(self) -> tuple[int, int, int, int, str]:
        """The summary line: (trials run, complete, pruned, failed, stopped by)."""
        for line in self.out.read_text().splitlines():
            m = _DONE.match(line)
            if m:
                run, complete, pruned, failed, stopped = m.groups()
                return int(run), int(complete), int(pruned), int(failed), stopped
        raise AssertionError(f"no summary line: {self.logs()}")


def _logs(workers: list[HpoRun]) -> str:
    return "\n".join(w.logs() for w in workers)


def _load(url: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=open_storage(url))


def _wait_running(url: str, pids: set[int], workers: list[HpoRun], timeout: float = 120) -> tuple[int, int]:
    """(trial number, pid) of the first RUNNING trial of one of `pids` whose objective has begun (its config
    is recorded), i.e. a trial that is training now."""
    deadline = time.monotonic() + timeout
    study = None
    while time.monotonic() < deadline:
        if any(w.proc.poll() is not None for w in workers):
            break
        try:
            study = study or _load(url)
        except KeyError:  # the first worker has not created the study yet
            time.sleep(0.1)
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = worker_of(t)[1]
            if pid in pids and "config" in t.user_attrs:
                return t.number, pid
        time.sleep(0.05)
    raise AssertionError(f"no trial of {sorted(pids)} started training: {_logs(workers)}")


def _assert_done(study: optuna.Study, n: int) -> list[FrozenTrial]:
    counts = budget_counts(study)
    assert counts["complete"] + counts["pruned"] == n, counts
    assert counts["running"] == 0 and counts["waiting"] == 0, counts
    finished = study.get_trials(states=FINISHED)
    keys = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(keys)) == len(keys), "two finished trials with identical params"
    return finished


def _url(kind: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    if kind == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"journal:///{tmp / 'hpo.log'}"


BUDGET_CASES = [
    *(pytest.param("postgres", name, marks=pytest.mark.postgres, id=f"postgres-{name}") for name in SAMPLERS),
    pytest.param("journal", "tpe", id="journal-tpe"),
]


@pytest.mark.parametrize(("kind", "sampler"), BUDGET_CASES)
def test_three_workers_end_at_exactly_the_budget(
    kind: str, sampler: str, tmp_path: Path, request: pytest.FixtureRequest, fast_heartbeat: dict[str, str]
) -> None:
    url = _url(kind, tmp_path, request)
    # Started together on an empty database: they race to create the schema and the study.
    workers = [HpoRun(tmp_path, f"w{i}", url, 9, "--sampler", sampler) for i in range(3)]
    assert [w.finish() for w in workers] == [0, 0, 0], _logs(workers)
    study = _load(url)
    _assert_done(study, 9)
    assert study.user_attrs["sampler"] == sampler and study.user_attrs["workers_joined"] == 3
    summaries = [w.done() for w in workers]
    assert sum(complete + pruned for _, complete, pruned, _, _ in summaries) == 9, _logs(workers)  # no overshoot
    assert {stopped for *_, stopped in summaries} == {"budget"}
    assert not any("Traceback" in w.err.read_text() for w in workers), _logs(workers)


@pytest.mark.postgres
def test_killed_worker_trial_fails_by_heartbeat_and_a_survivor_retries_it(
    pg_url: str, tmp_path: Path, fast_heartbeat: dict[str, str]
) -> None:
    workers = [HpoRun(tmp_path, f"w{i}", pg_url, 5, *LONG_TRIALS) for i in range(3)]
    number, pid = _wait_running(pg_url, {w.pid for w in workers}, workers)
    (victim,) = [w for w in workers if w.pid == pid]
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.proc.wait(10) == -signal.SIGKILL
    assert _load(pg_url).trials[number].state == TrialState.RUNNING  # killed mid-trial: nobody told it
    survivors = [w for w in workers if w is not victim]
    assert [w.finish() for w in survivors] == [0, 0], _logs(survivors)

    study = _load(pg_url)
    _assert_done(study, 5)
    killed = study.trials[number]
    assert killed.state == TrialState.FAIL, _logs(survivors)
    assert "fail_reason" not in killed.user_attrs  # failed by the heartbeat check, not by a worker's own tell
    (retry,) = [t for t in study.trials if t.system_attrs.get("retry_history") == [number]]
    assert retry.params == killed.params and retry.state.is_finished()
    if retry.state == TrialState.FAIL:  # smoke's lr range reaches 1e-2: the same params may diverge again
        assert retry.user_attrs["fail_reason"].startswith("training diverged")
    assert worker_of(retry)[1] in {w.pid for w in survivors}


@pytest.mark.postgres
def test_sigterm_fails_the_running_trial_requeues_it_and_exits_143(
    pg_url: str, tmp_path: Path, fast_heartbeat: dict[str, str]
) -> None:
    worker = HpoRun(tmp_path, "w", pg_url, 2, *LONG_TRIALS)
    number, _ = _wait_running(pg_url, {worker.pid}, [worker])
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish(60) == 143, worker.logs()
    assert "interrupted: the running trial was marked FAIL" in worker.out.read_text(), worker.logs()
    assert "Traceback" not in worker.err.read_text(), worker.logs()

    study = _load(pg_url)
    failed = study.trials[number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "interrupted", worker.logs()
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs["retry_of"] == number and queued.system_attrs["fixed_params"] == failed.params

    again = HpoRun(tmp_path, "again", pg_url, 1, *LONG_TRIALS)  # the next worker (same settings) takes the retry first
    assert again.finish() == 0, again.logs()
    (retry,) = [t for t in _load(pg_url).trials if t.user_attrs.get("retry_of") == number]
    assert retry.params == failed.params and retry.state.is_finished() and worker_of(retry)[1] == again.pid


def test_unreachable_database_is_one_line_exit_2_without_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://u:secret@127.0.0.1:1/x"
    cmd = [sys.executable, "-m", "hpo", "run", "--study", STUDY, "--storage", url]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot open PostgreSQL at 127.0.0.1:1 ")
    assert "is the server running" in lines[0] and "--storage / HPO_STORAGE" in lines[0]
    assert "secret" not in proc.stdout + proc.stderr
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []  # nothing written
