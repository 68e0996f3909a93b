"""The worker loop: claim a slot of the study's budget, run the objective, tell, repeat.

Hand-rolled rather than `Study.optimize`, which has neither the budget claim (`hpo.budget`) nor safe signal
handling (`hpo.signals`); it keeps Optuna's pieces: `ask`/`tell`, the RDB heartbeat thread and
`fail_stale_trials`. On SIGINT/SIGTERM the running trial is told FAIL ("interrupted"), re-queued with the same
params, and `WorkerInterrupted` raised (the CLI exits 130/143). A finished result is told until the database
takes it (`hpo.tell`). docs/ARCHITECTURE.md, "The worker protocol".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hpo.budget import budget_counts, claim_trial, used_finished
from hpo.errors import StorageError
from hpo.reaper import reap_interval, reap_stale
from hpo.signals import Signals, WorkerInterrupted
from hpo.tell import tell_result
from model.errors import DivergedError

__all__ = ["WorkerResult", "run_worker"]

log = logging.getLogger(__name__)

ObjectiveFn = Callable[[optuna.Trial], float]
MAX_CONSECUTIVE_FAILURES = 10  # a worker whose every trial fails (bad data, OOM) stops instead of spinning
# A worker whose trials fail in a row with one and the same error (a broken data set, a full disk) stops after
# this many: the next trial would fail the same way. Divergence (a property of the sampled params) is not counted.
MAX_SAME_ERROR = 3


@dataclass
class TrialSource:
    """Where a worker's next trial comes from, and when no more will come.

    The search's source (the default) claims a slot of the study's budget; confirmation's (`hpo.confirm`) takes
    the queued confirmation runs. `claim` gets the heartbeat stack to leave the new trial's heartbeat on.
    """

    claim: Callable[[ExitStack], optuna.Trial | None]
    done: Callable[[], bool]


@dataclass
class WorkerResult:
    """What this worker did; `stopped` is "budget", "timeout" or "failures" (too many FAILs in a row).

    `error` is the one error the last trials all failed with, when that is why the worker stopped.
    """

    trials_run: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    stopped: str = "budget"
    error: str = ""

    def failure(self) -> str | None:
        """Why the worker gave up, as the one line the CLI prints; None when it did not."""
        if self.stopped != "failures":
            return None
        if self.error:
            return (
                f"the last trials all failed with the same error, so this worker stopped: {self.error} "
                "(fix it, then run again: FAIL trials do not use the budget)"
            )
        return (
            "this worker stopped after too many failed trials in a row (see `hpo status` and each trial's fail_reason)"
        )


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
    source: TrialSource | None = None,
    max_same_error: int | None = MAX_SAME_ERROR,
) -> WorkerResult:
    """Run trials until the study holds `n_trials` COMPLETE+PRUNED trials (all workers together).

    While the budget is taken but trials still run elsewhere, the worker polls (reaping dead workers'
    trials) in case one fails and frees its slot. `timeout` (seconds) stops it between trials or while
    polling. `source` replaces the budget as the supplier of trials (confirmation runs). The objective may
    raise `optuna.TrialPruned` (PRUNED) or any exception (FAIL with user attr "fail_reason"; the study goes on).

    Raises:
        WorkerInterrupted: on SIGINT/SIGTERM, after the running trial was told FAIL and re-queued.
        StorageError: the database stayed unreachable for the retry window (`HPO_DB_RETRY_SECONDS`).
    """
    if n_trials <= 0:
        raise ValueError(f"n_trials must be > 0, got {n_trials}")
    if source is None:
        source = TrialSource(
            claim=lambda beat: claim_trial(study, n_trials, distributions=distributions, beat=beat),
            done=lambda: used_finished(budget_counts(study)) >= n_trials,
        )
    result = WorkerResult()
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    failures_in_row = 0
    same_error, same_count = "", 0  # the error the last FAILs in a row all had, and how many they are
    waiting_logged = False
    # Between back-to-back trials, reap at most once per heartbeat interval: a trial goes stale only after the
    # grace period (several intervals), so this delays noticing a dead worker by under one interval and saves a
    # query per trial. While waiting for the budget, every poll reaps.
    reap_every, last_reap = reap_interval(study), -math.inf
    with Signals() as signals:
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
                trial = source.claim(beat)
            except BaseException:
                beat.close()
                raise
            if trial is None:
                beat.close()
                last_reap = -math.inf
                if source.done():
                    result.stopped = "budget"
                    break
                if not waiting_logged:
                    log.info("no trial to take now: waiting for trials running on other workers")
                    waiting_logged = True
                pause = poll_interval if deadline is None else min(poll_interval, max(deadline - time.monotonic(), 0))
                with signals.armed():
                    time.sleep(pause)
                continue
            waiting_logged = False
            frozen, error = _run_trial(study, trial, objective, signals, on_trial_start, n_trials, beat)
            result.trials_run += 1
            if frozen.state == TrialState.COMPLETE:
                result.complete += 1
            elif frozen.state == TrialState.PRUNED:
                result.pruned += 1
            else:
                result.failed += 1
            failures_in_row = failures_in_row + 1 if frozen.state == TrialState.FAIL else 0
            error = error if frozen.state == TrialState.FAIL else ""
            same_count = same_count + 1 if error and error == same_error else int(bool(error))
            same_error = error
            if on_trial_end is not None:
                on_trial_end(study, frozen)
            if max_same_error is not None and same_count >= max_same_error:
                log.info("%d trials in a row failed with the same error: stopping this worker", same_count)
                result.stopped, result.error = "failures", error
                break
            if max_consecutive_failures is not None and failures_in_row >= max_consecutive_failures:
                log.error("%d trials in a row failed on this worker: stopping it (see fail_reason)", failures_in_row)
                result.stopped = "failures"
                break
    return result


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: ObjectiveFn,
    signals: Signals,
    on_trial_start: Callable[[optuna.Trial], None] | None,
    n_trials: int,
    beat: ExitStack,
) -> tuple[FrozenTrial, str]:
    """Run the objective with the trial's heartbeat (`beat`, started by the claim; stopped before the tell).

    Returns the finished trial and, when the objective raised (other than a divergence), its error's line.
    """
    value: Any = None
    reason = ""
    error_repeats = False
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
        error_repeats = not isinstance(exc, DivergedError)  # divergence depends on the sampled params
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
    frozen = tell_result(study, trial, state, value, reason, n_trials)
    return frozen, reason if error_repeats else ""


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
