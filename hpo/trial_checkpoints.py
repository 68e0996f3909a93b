"""Trial checkpoints: a running trial's last finished epoch, resumed by its retry; the best trials' final weights.

Files live under the study's artifact folder (`hpo.artifacts.artifacts_dir`), which every worker reaches:

    ARTIFACTS/trial-checkpoints/STUDY/running/lineage-L.pt   the last finished epoch of a running trial
    ARTIFACTS/trial-checkpoints/STUDY/weights/trial-N.pt     the final checkpoint of trial N, one of the best

A trial and its retries (Optuna's heartbeat retry, our SIGINT/SIGTERM and journal re-queues) form a lineage,
named after its first trial (user attr `lineage`), so a retry finds the file its predecessor wrote. The content
is `hpo retrain`'s last.pt (model, optimizer, scheduler, RNG streams, per-epoch metrics), written atomically by
the trainer after every epoch and loaded weights-only. See docs/ARCHITECTURE.md, "Trial checkpoints".
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo.artifacts import artifacts_dir
from hpo.errors import StudyError
from model.checkpoint import atomic_write_bytes, check_resumable, config_of, load_checkpoint, model_from_checkpoint
from model.config import TrainConfig
from model.device import resolve_device
from model.errors import CheckpointError
from model.predict import check_fields
from model.retrain import RESUME_FREE_FIELDS

__all__ = [
    "LINEAGE_ATTR",
    "RESUMED_ATTR",
    "TrialCheckpoints",
    "export_weights",
    "kept_weights",
    "lineage_of",
    "study_checkpoints",
    "trial_weights",
]

log = logging.getLogger(__name__)

LINEAGE_ATTR = "lineage"  # user attr: the first trial of this trial's retry chain (its checkpoint's name)
RESUMED_ATTR = "resumed_from_epoch"  # user attr of a retry: epochs its predecessors had finished (0: restarted)
_WEIGHTS = re.compile(r"^trial-(\d+)\.pt$")
_RUNNING = re.compile(r"^lineage-(\d+)\.pt$")


def study_checkpoints(url: str, study_name: str) -> Path:
    """The folder of a study's trial checkpoints, for the storage `url` (absolute path)."""
    return artifacts_dir(url) / "trial-checkpoints" / quote(study_name, safe="")


def lineage_of(trial: FrozenTrial, trials: dict[int, FrozenTrial]) -> int:
    """The trial number that names `trial`'s lineage: the first trial of its chain of retries.

    Optuna's heartbeat retry copies the failed trial's user attrs (so `lineage` comes with it) and lists the
    chain in system attr `retry_history`; our re-queues set user attr `retry_of` only, so the chain is walked.
    """
    seen: set[int] = set()
    while trial.number not in seen:
        seen.add(trial.number)
        recorded = trial.user_attrs.get(LINEAGE_ATTR)
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            return recorded
        history = trial.system_attrs.get("retry_history")
        before = trial.user_attrs.get("retry_of")
        previous = history[-1] if isinstance(history, list) and history else before
        if not isinstance(previous, int) or previous not in trials:
            break
        trial = trials[previous]
    return trial.number


@dataclasses.dataclass
class TrialCheckpoints:
    """One study's trial checkpoints: `folder` from `study_checkpoints`, `keep` best trials' weights kept."""

    folder: Path
    keep: int  # the spec's `[study] keep_weights`

    def running(self, lineage: int) -> Path:
        return self.folder / "running" / f"lineage-{lineage}.pt"

    def weights(self, number: int) -> Path:
        return self.folder / "weights" / f"trial-{number}.pt"

    def start(self, trial: optuna.Trial, config: TrainConfig) -> tuple[Path, dict[str, Any] | None]:
        """Record the trial's lineage; returns its checkpoint file and, for a retry, the state to resume from.

        A retry whose predecessors left no usable checkpoint (missing, unreadable, another config) restarts
        from epoch 1 with a logged warning. A retry records `resumed_from_epoch` (0 when it restarted).
        """
        attrs = trial.user_attrs
        lineage = attrs.get(LINEAGE_ATTR)  # Optuna's retry copies it from the trial it retries
        if not isinstance(lineage, int) or isinstance(lineage, bool):
            lineage = trial.number
            if "retry_of" in attrs:  # our re-queues: walk the chain (read only for such a retry)
                trials = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
                lineage = lineage_of(trials[trial.number], trials) if trial.number in trials else lineage
        trial.set_user_attr(LINEAGE_ATTR, lineage)
        path = self.running(lineage)
        if lineage == trial.number:
            return path, None
        state = self._resumable(path, config, trial.number)
        trial.set_user_attr(RESUMED_ATTR, 0 if state is None else int(state["epoch"]) + 1)
        if state is not None:
            log.info("trial %d resumes lineage %d after epoch %d", trial.number, lineage, int(state["epoch"]) + 1)
        return path, state

    def _resumable(self, path: Path, config: TrainConfig, number: int) -> dict[str, Any] | None:
        if not path.exists():
            log.warning("trial %d is a retry but its checkpoint %s is missing: training from epoch 1", number, path)
            return None
        try:
            state = load_checkpoint(path)
            check_resumable(state, path)
            names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RESUME_FREE_FIELDS]
            check_fields(config_of(state), config, names, str(path), "it is another trial's")
            model_from_checkpoint(state)
            _check_device_stream(state, config, path)
        except CheckpointError as exc:
            log.warning("trial %d cannot resume (%s): training from epoch 1", number, exc)
            return None
        return state

    def ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """After the tell: keep the checkpoint as trial weights when COMPLETE among the `keep` best, else remove it;
        then remove the kept weights of finished trials that fell out of the best `keep`.

        Never raises for a file: a checkpoint that cannot be moved or removed is a logged warning.
        """
        lineage = trial.user_attrs.get(LINEAGE_ATTR)
        if not isinstance(lineage, int):
            return
        path = self.running(lineage)
        try:
            if trial.state != TrialState.COMPLETE or self.keep <= 0:
                path.unlink(missing_ok=True)
                return
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            best = _best(complete, study.direction, self.keep)
            if trial.number in best and path.exists():
                self.weights(trial.number).parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, self.weights(trial.number))
            else:
                path.unlink(missing_ok=True)
            # Only the files of trials this read saw COMPLETE: one told since may be among the best.
            seen = {t.number for t in complete}
            for number, kept in kept_weights(self.folder).items():
                if number in seen and number not in best:
                    kept.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("trial %d: its checkpoint %s was not kept or removed (%s)", trial.number, path, exc)

    def sweep(self, study: optuna.Study) -> int:
        """Remove the running checkpoints no trial will resume: a lineage with no RUNNING or WAITING trial (its
        retries ran out, e.g. Optuna's `max_retry`, or it was never retried). Called when a worker stops; the
        number removed. Should a retry be queued just after this read, it restarts from epoch 1 with a warning,
        which is the worst this can do."""
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        alive = {lineage_of(t, trials) for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)}
        removed = 0
        for path in (self.folder / "running").glob("lineage-*.pt"):
            m = _RUNNING.match(path.name)
            if m and int(m.group(1)) not in alive:
                try:
                    path.unlink(missing_ok=True)
                    removed += 1
                except OSError as exc:
                    log.warning("orphaned trial checkpoint %s was not removed (%s)", path, exc)
        if removed:
            log.info("removed %d trial checkpoint(s) no retry will resume", removed)
        return removed


def _check_device_stream(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A checkpoint from another kind of device (a GPU worker's, read on a CPU) holds a random stream this one
    cannot continue: a CheckpointError, so the retry restarts rather than fails in `train`."""
    device = resolve_device(config.device)
    try:
        torch.Generator(device=device).set_state(state["rng"]["device"])
    except (RuntimeError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint {str(path)!r} was written on another kind of device than {device}") from None


def _best(trials: list[FrozenTrial], direction: optuna.study.StudyDirection, keep: int) -> set[int]:
    """The numbers of the `keep` best trials by value (a tie goes to the earlier trial)."""
    sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    scored = sorted((sign * t.value, t.number) for t in trials if t.value is not None)
    return {number for _, number in scored[:keep]}


def kept_weights(folder: Path) -> dict[int, Path]:
    """Trial number -> kept final checkpoint, in a study's checkpoint folder."""
    found = {}
    for path in (folder / "weights").glob("trial-*.pt"):
        m = _WEIGHTS.match(path.name)
        if m:
            found[int(m.group(1))] = path
    return dict(sorted(found.items()))


def trial_weights(study: optuna.Study, url: str, number: int) -> Path:
    """The kept final checkpoint of trial `number` of `study` (StudyError naming the problem and the fix)."""
    name = study.study_name
    trials = study.get_trials(deepcopy=False)
    if not any(t.number == number for t in trials):
        last = f"0..{len(trials) - 1}" if trials else "none yet"
        raise StudyError(f"study {name!r} has no trial {number} (its trials: {last}): pick one from `hpo status`")
    kept = kept_weights(study_checkpoints(url, name))
    if number not in kept:
        have = ", ".join(map(str, kept)) or "none"
        raise StudyError(
            f"trial {number} of {name!r} has no kept weights (only the best `keep_weights` trials keep theirs; kept: "
            f"{have}): pick a kept trial, or `hpo export` its config and `hpo retrain` it"
        )
    return kept[number]


def export_weights(study: optuna.Study, url: str, number: int, dest: str | Path) -> Path:
    """`hpo export --weights PATH`: copy trial N's kept final checkpoint to `dest`, atomically.

    Raises:
        StudyError: trial N kept no weights; WriteError: `dest` cannot be written.
    """
    source = trial_weights(study, url, number)
    data = source.read_bytes()
    atomic_write_bytes(dest, lambda f: f.write(data))
    return Path(dest)
