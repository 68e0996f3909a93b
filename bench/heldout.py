"""Held-out retrains for the benches: a study's pick trained again with training seeds of the bench's choosing.

Not `hpo top` (which confirms candidates inside the study, `hpo.confirm`): these runs judge a pick from outside,
on seeds neither the search nor the confirmation used, and write nothing to the storage or the disk.
"""

from __future__ import annotations

import logging
import math

import optuna

from hpo.results import trial_config
from model.config import TrainConfig
from model.data import DataCache
from model.errors import DivergedError
from model.train import train

log = logging.getLogger(__name__)
_cache = DataCache()


def retrain(config: TrainConfig, seeds: list[int]) -> list[float]:
    """Final val PSNR of `config` trained once per seed (a diverged run is NaN, a result about the config)."""
    values = []
    for seed in seeds:
        c = config.replace(seed=seed, out="")
        try:
            values.append(float(train(c, _cache.get(c)).val_psnr))
        except DivergedError as exc:
            log.warning("seed %d: %s", seed, exc)
            values.append(math.nan)
    return values


def retrain_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, seeds: list[int]) -> list[float]:
    """`retrain` of the complete config a trial of `study` trained with."""
    return retrain(trial_config(study, trial), seeds)
