"""SIGINT/SIGTERM in a worker: stop at a safe point, never inside a storage call (docs/ARCHITECTURE.md, "Signals").

The running trial is told FAIL ("interrupted") and re-queued by the worker loop; `WorkerInterrupted` carries
the exit code the CLI returns (130/143, as a shell reports them).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["Signals", "WorkerInterrupted"]


class WorkerInterrupted(Exception):
    """SIGINT/SIGTERM ended the worker; the running trial was told FAIL ("interrupted") and re-queued."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


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


class Signals:
    """SIGINT/SIGTERM while `armed` (in the objective, or waiting) raise WorkerInterrupted at once, or, when
    they land inside a storage call, as soon as it has returned (re-checked every 10 ms on SIGALRM); elsewhere
    (claiming, telling) they are held until `check()`, so no trial is left half-created or half-told. The
    first signal restores the previous handlers: a second one acts as usual (KeyboardInterrupt, termination)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._armed = False
        self._previous: dict[int, Any] = {}
        self._previous_alarm: Any = None  # SIGALRM's handler while a deferred signal waits to be raised

    def __enter__(self) -> Signals:
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
