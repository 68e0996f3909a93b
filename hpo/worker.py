"""The worker loop (DESIGN §6–§7): claim a slot of the study's budget, run the objective, tell, repeat.

Hand-rolled rather than `Study.optimize`, which has neither the budget claim (`hpo.budget`) nor this signal
handling; it keeps Optuna's pieces: `ask`/`tell`, the RDB heartbeat thread and `fail_stale_trials`.
Signals: the running trial is told FAIL ("interrupted"), re-queued with the same params, and
`WorkerInterrupted` raised (the CLI exits 130/143). A finished result is told until the database takes it.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hpo.budget import budget_counts, claim_trial, used_slots
from hpo.errors import StorageError
from hpo.locks import study_lock
from hpo.storage import reap_interval, reap_stale
from model.errors import DivergedError

__all__ = [
    "WorkerInterrupted",
    "WorkerResult",
    "budget_counts",
    "claim_trial",
    "run_worker",
    "study_lock",
]

log = logging.getLogger(__name__)

ObjectiveFn = Callable[[optuna.Trial], float]
MAX_CONSECUTIVE_FAILURES = 10  # a worker whose every trial fails (bad data, OOM) stops instead of spinning


class WorkerInterrupted(Exception):
    """SIGINT/SIGTERM ended the worker; the running trial was told FAIL ("interrupted") and re-queued."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@dataclass
class WorkerResult:
    """What this worker did; `stopped` is "budget", "timeout" or "failures" (too many FAILs in a row)."""

    trials_run: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    stopped: str = "budget"


# Code an exception must not cut short: raised inside a driver call, it leaves the connection mid-command
# (SQLAlchemy logs a traceback resetting it, Optuna may report a storage error).
_STORAGE_MODULES = ("sqlalchemy", "psycopg", "optuna.storages", "hpo.dbretry", "filelock")
_RECHECK_S = 0.01


def _in_storage_call(frame: FrameType | None) -> bool:
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(_STORAGE_MODULES):
            return True
        frame = frame.f_back
    return False


class _Signals:
    """SIGINT/SIGTERM while `armed` (in the objective, or waiting) raise WorkerInterrupted at once, or, when
    they land inside a storage call, as soon as it has returned (re-checked every 10 ms on SIGALRM); elsewhere
    (claiming, telling) they are held until `check()`, so no trial is left half-created or half-told. The
    first signal restores the previous handlers: a second one acts as usual (KeyboardInterrupt, termination)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._armed = False
        self._previous: dict[int, Any] = {}
        self._previous_alarm: Any = None  # SIGALRM's handler while a deferred signal waits to be raised

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()
        self._stop_recheck()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        self._restore()
        if self._armed:
            self._raise_outside_storage(frame)

    def _raise_outside_storage(self, frame: FrameType | None) -> None:
        if self.signum is None:
            return
        if _in_storage_call(frame) and hasattr(signal, "setitimer"):
            if self._previous_alarm is None:
                self._previous_alarm = signal.signal(signal.SIGALRM, self._recheck) or signal.SIG_DFL
            signal.setitimer(signal.ITIMER_REAL, _RECHECK_S)
            return
        self._stop_recheck()
        raise WorkerInterrupted(self.signum)

    def _recheck(self, signum: int, frame: FrameType | None) -> None:
        if self._armed:
            self._raise_outside_storage(frame)

    def _stop_recheck(self) -> None:
        if self._previous_alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous_alarm)
            self._previous_alarm = None

    @contextmanager
    def armed(self) -> Iterator[None]:
        self.check()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False
            self._stop_recheck()  # a signal still deferred is raised by the next check()

    def check(self) -> None:
        if self.signum is not None:
            raise WorkerInterrupted(self.signum)


def run_worker(
    study: optuna.Study,
    objective: ObjectiveFn,
    n_trials: int,
    *,
    timeout: float | None = None,
    on_trial_start: Callable[[optuna.Trial], None] | None = None,
    on_trial_end: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    poll_interval: float = 1.0,
    distributions: Mapping[str, BaseDistribution] | None = None,
    max_consecutive_failures: int | None = MAX_CONSECUTIVE_FAILURES,
) -> WorkerResult:
    """Run trials until the study holds `n_trials` COMPLETE+PRUNED trials (all workers together).

    While the budget is taken but trials still run elsewhere, the worker polls (reaping dead workers'
    trials) in case one fails and frees its slot. `timeout` (seconds) stops it between trials or while
    polling. The objective may raise `optuna.TrialPruned` (PRUNED) or any exception (FAIL with user attr
    "fail_reason"; the study goes on).

    Raises:
        WorkerInterrupted: on SIGINT/SIGTERM, after the running trial was told FAIL and re-queued.
        StorageError: the database stayed unreachable for the retry window (`HPO_DB_RETRY_SECONDS`).
    """
    if n_trials <= 0:
        raise ValueError(f"n_trials must be > 0, got {n_trials}")
    result = WorkerResult()
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    failures_in_row = 0
    waiting_logged = False
    # Between back-to-back trials, reap at most once per heartbeat interval: a trial goes stale only after the
    # grace period (several intervals), so this delays noticing a dead worker by under one interval and saves a
    # query per trial. While waiting for the budget, every poll reaps.
    reap_every, last_reap = reap_interval(study), -math.inf
    with _Signals() as signals:
        while True:
            signals.check()
            if deadline is not None and time.monotonic() >= deadline:
                result.stopped = "timeout"
                break
            if time.monotonic() - last_reap >= reap_every:
                reap_stale(study)
                last_reap = time.monotonic()
            beat = ExitStack()  # the trial's heartbeat, from its claim to the end of its objective
            try:
                trial = claim_trial(study, n_trials, distributions=distributions, beat=beat)
            except BaseException:
                beat.close()
                raise
            if trial is None:
                beat.close()
                last_reap = -math.inf
                counts = budget_counts(study)
                if counts["complete"] + counts["pruned"] >= n_trials:
                    result.stopped = "budget"
                    break
                if not waiting_logged:
                    log.info("budget taken: waiting for %d trial(s) running on other workers", counts["running"])
                    waiting_logged = True
                pause = poll_interval if deadline is None else min(poll_interval, max(deadline - time.monotonic(), 0))
                with signals.armed():
                    time.sleep(pause)
                continue
            waiting_logged = False
            frozen = _run_trial(study, trial, objective, signals, on_trial_start, n_trials, beat)
            result.trials_run += 1
            if frozen.state == TrialState.COMPLETE:
                result.complete += 1
            elif frozen.state == TrialState.PRUNED:
                result.pruned += 1
            else:
                result.failed += 1
            failures_in_row = failures_in_row + 1 if frozen.state == TrialState.FAIL else 0
            if on_trial_end is not None:
                on_trial_end(study, frozen)
            if max_consecutive_failures is not None and failures_in_row >= max_consecutive_failures:
                log.error("%d trials in a row failed on this worker: stopping it (see fail_reason)", failures_in_row)
                result.stopped = "failures"
                break
    return result


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: ObjectiveFn,
    signals: _Signals,
    on_trial_start: Callable[[optuna.Trial], None] | None,
    n_trials: int,
    beat: ExitStack,
) -> FrozenTrial:
    """Run the objective with the trial's heartbeat (`beat`, started by the claim; stopped before the tell)."""
    value: Any = None
    reason = ""
    try:
        with beat, signals.armed():
            if on_trial_start is not None:
                on_trial_start(trial)
            value = objective(trial)
        state = TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except (WorkerInterrupted, KeyboardInterrupt):
        _fail_interrupted(study, trial)
        raise
    except StorageError:
        raise  # the heartbeat stops with this process: the trial is reaped and retried by the next worker
    except Exception as exc:
        if signals.signum is not None:  # the objective turned our WorkerInterrupted into an error of its own
            _fail_interrupted(study, trial)
            raise WorkerInterrupted(signals.signum) from exc
        state, reason = TrialState.FAIL, _reason(exc)
        if isinstance(exc, DivergedError):
            log.warning("trial %d failed: %s", trial.number, reason)
        else:
            log.warning("trial %d failed: %s", trial.number, reason, exc_info=True)
    if state == TrialState.COMPLETE:
        value, reason = _checked_value(value)
        state = TrialState.COMPLETE if not reason else TrialState.FAIL
        if reason:
            log.warning("trial %d failed: %s", trial.number, reason)
    # A signal during the tell is held: the result is kept, and the loop stops at its next check.
    return _tell(study, trial, state, value, reason, n_trials)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    if isinstance(exc, DivergedError):
        return line
    name = type(exc).__name__
    return (f"{name}: {line}" if line else name)[:300]


def _checked_value(value: Any) -> tuple[float | None, str]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"objective returned {value!r}, not a number"
    if not math.isfinite(number):
        return None, f"objective returned {number}"
    return number, ""


def _fail_interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    try:
        params = dict(trial.params)
        if params:  # queued before the FAIL, so a crash in between cannot lose the retry
            study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
        trial.set_user_attr("fail_reason", "interrupted")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    except (StorageError, UpdateFinishedTrialError) as exc:
        log.error("trial %d interrupted but could not be marked FAIL: %s", trial.number, exc)
        return
    log.warning("trial %d interrupted: marked FAIL and re-queued with the same params", trial.number)


def _tell(
    study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None, reason: str, n_trials: int
) -> FrozenTrial:
    # A finished result is told until the database takes it: each attempt retries for the storage's window.
    values = value if state == TrialState.COMPLETE else None
    reason_told = not reason
    while True:
        try:
            if not reason_told:
                trial.set_user_attr("fail_reason", reason)
                reason_told = True
            frozen = study.tell(trial, values, state=state, skip_if_finished=True)
            break
        except UpdateFinishedTrialError:
            # It finished meanwhile (our own tell whose reply was lost, or a reaper that took it for dead):
            # the next tell returns it as it is.
            reason_told = True
        except StorageError as exc:
            if state == TrialState.FAIL:
                raise
            log.warning(
                "trial %d finished (%s, value %s) but the database did not take it: %s; trying again",
                trial.number,
                state.name,
                value,
                exc,
            )
    if frozen.state != state and state != TrialState.FAIL:
        return _recover(study, frozen, state, value, n_trials)
    return frozen


def _recover(study: optuna.Study, lost: FrozenTrial, state: TrialState, value: float | None, n: int) -> FrozenTrial:
    """Keep the result of a trial another worker failed as stale (heartbeats lost in a long outage).

    Under the lock: if the budget has room and no retry of the lost trial has started, add the result as a new
    trial and cancel the queued retry; otherwise the retry (same params) stands in for it.
    """
    with study_lock(study):
        retries = [t for t in study.get_trials(deepcopy=False) if _retry_of(t) == lost.number]
        started = [t for t in retries if t.state != TrialState.WAITING]
        if started or used_slots(budget_counts(study)) >= n:
            log.warning("trial %d (value %s) was reaped and re-run meanwhile: the retry stands", lost.number, value)
            return lost
        attrs = {k: v for k, v in lost.user_attrs.items() if k != "fail_reason"}
        if state == TrialState.PRUNED:
            value = lost.intermediate_values[lost.last_step] if lost.last_step is not None else None
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params=lost.params,
                distributions=lost.distributions,
                user_attrs={**attrs, "recovered_from": lost.number},
                intermediate_values=lost.intermediate_values,
            )
        )
        for t in retries:  # all WAITING
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"superseded: trial {lost.number} recovered")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        recovered = next(t for t in study.get_trials() if t.user_attrs.get("recovered_from") == lost.number)
    log.warning("trial %d was reaped while it ran; its result is kept as trial %d", lost.number, recovered.number)
    return recovered


def _retry_of(trial: FrozenTrial) -> int | None:
    """The trial this one re-runs: set by our re-queues (user attr) or Optuna's heartbeat retry (system attr)."""
    history = trial.system_attrs.get("retry_history")
    if isinstance(history, list) and history:
        return int(history[-1])
    retry_of = trial.user_attrs.get("retry_of")
    return int(retry_of) if isinstance(retry_of, int) else None
