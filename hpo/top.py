"""`hpo top`: re-evaluate the K best complete trials of a study with several seeds each, and rank them again.

A trial's value is one draw: with the seed fixed, a lucky initialisation can put a config on top. The tuning
playbook's advice is to rerun the best few with several seeds and compare means, with the spread in view,
before adopting one. Seeds are seed, seed+1, ... of each trial's own config, so the first rerun repeats the
trial (the same value on the same device and epochs).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import StudyError
from hpo.results import trial_config
from model.config import TrainConfig
from model.data import DataCache
from model.errors import DivergedError, UsageError
from model.train import EpochHook, train

__all__ = ["TopRow", "format_table", "reevaluate", "top_trials"]

log = logging.getLogger(__name__)

HookFactory = Callable[[int, TrainConfig], EpochHook]  # (trial number, run config) -> per-epoch hook


@dataclass
class TopRow:
    trial: int
    original: float  # the trial's value in the study
    values: list[float] = field(default_factory=list)  # final val PSNR of each seed's run
    seeds: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        if any(math.isnan(v) for v in self.values):
            return math.nan  # a diverged seed (statistics.stdev cannot take NaN)
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def _maximize(study: optuna.Study) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k best COMPLETE trials with a finite value, best first."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    if not done:
        raise StudyError(
            f"study {study.study_name!r} has no complete trial to re-evaluate: run trials first "
            f"(`hpo run --study {study.study_name}`)"
        )
    return sorted(done, key=lambda t: (-t.value if _maximize(study) else t.value, t.number))[:k]  # type: ignore[operator]


def reevaluate(
    study: optuna.Study,
    k: int = 5,
    seeds: int = 3,
    epochs: int | None = None,
    overrides: dict[str, Any] | None = None,
    hook_factory: HookFactory | None = None,
    on_run: Callable[[int, int, float], None] | None = None,
) -> list[TopRow]:
    """Train each of the k best trials' configs with `seeds` seeds; rows ranked by mean value, best first.

    Args:
        epochs: main-stage epochs of every rerun (default: each trial's own).
        overrides: fields set on every rerun's config (e.g. device, data); nothing is written to disk.
        on_run: called with (trial number, seed, final val PSNR) after each run.
    """
    if k < 1 or seeds < 1:
        raise UsageError(f"-k and --seeds must be >= 1, got -k {k} --seeds {seeds}")
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {epochs}")
    changes = dict(overrides or {})
    if epochs is not None:
        changes["epochs"] = epochs
    trials = top_trials(study, k)
    # Every config first: a trial whose config no longer validates fails before hours of training.
    configs = {t.number: trial_config(study, t).replace(**changes, out="") for t in trials}
    cache = DataCache()
    rows = []
    for t in trials:
        row = TopRow(t.number, float(t.value), params=dict(t.params))  # type: ignore[arg-type]
        base = configs[t.number]
        for i in range(seeds):
            config = base.replace(seed=base.seed + i)
            hook = hook_factory(t.number, config) if hook_factory is not None else None
            try:
                value = float(train(config, cache.get(config), on_epoch=hook).val_psnr)
            except DivergedError as exc:  # one seed's blow-up is a result about the config, not an error
                log.warning("trial %d seed %d: %s", t.number, config.seed, exc)
                value = math.nan
            row.values.append(value)
            row.seeds.append(config.seed)
            log.info("trial %d seed %d: val PSNR %.4f", t.number, config.seed, value)
            if on_run is not None:
                on_run(t.number, config.seed, value)
        rows.append(row)
    sign = -1.0 if _maximize(study) else 1.0
    return sorted(rows, key=lambda r: (sign * _finite(r.mean, sign), r.trial))


def _finite(value: float, sign: float) -> float:
    """NaN means (a diverged seed) rank last in either direction."""
    return value if math.isfinite(value) else sign * math.inf


def format_table(rows: list[TopRow]) -> str:
    """rank, trial, mean ± std over seeds, the original value, and the seeds' values."""
    lines = [f"{'rank':>4}  {'trial':>5}  {'mean':>8}  {'std':>6}  {'original':>8}  values"]
    for rank, r in enumerate(rows, 1):
        values = " ".join(f"{v:.2f}" for v in r.values)
        lines.append(f"{rank:>4}  {r.trial:>5}  {r.mean:>8.3f}  {r.std:>6.3f}  {r.original:>8.3f}  {values}")
    return "\n".join(lines)
