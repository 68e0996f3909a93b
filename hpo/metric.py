"""What a study's value is: its metric name (Optuna's `set_metric_names`), and that name's unit when printed.

Every hpo study maximises one value, the validation PSNR. The name is written when a study is created
(`hpo.run.open_study`), and for studies made before that by `hpo dashboard`, so optuna-dashboard labels its value
axis with it instead of "Objective 0". Other studies in the same storage (plain Optuna ones) are left alone, and
`hpo status` prints their values without a unit.

See docs/ARCHITECTURE.md, "Outputs".
"""

from __future__ import annotations

import logging
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning

from hpo.confirm import is_companion

__all__ = ["METRIC_NAME", "is_hpo_study", "metric_name", "name_metric", "value_text"]

log = logging.getLogger(__name__)

METRIC_NAME = "val PSNR (dB)"


def is_hpo_study(study: optuna.Study) -> bool:
    """A study `hpo run` made (its first worker records `spec_path`), or a confirmation companion of one."""
    return "spec_path" in study.user_attrs or is_companion(study.study_name)


def metric_name(study: optuna.Study) -> str | None:
    """The study's metric name: the one it stores, else `METRIC_NAME` for an hpo study made before names were
    stored, else None."""
    names = study.metric_names
    if names:
        return str(names[0])
    return METRIC_NAME if is_hpo_study(study) else None


def name_metric(study: optuna.Study) -> bool:
    """Store `METRIC_NAME` as the study's metric name when it has none; True when it wrote one.

    The caller knows the study is an hpo one (`hpo run` creating it, or `is_hpo_study`).
    """
    if study.metric_names or len(study.directions) != 1:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # set_metric_names is "experimental" in Optuna 5
        study.set_metric_names([METRIC_NAME])
    log.info("study %s: metric named %r", study.study_name, METRIC_NAME)
    return True


def value_text(value: float, name: str | None, digits: int = 2) -> str:
    """`value` as a person reads it: `28.31 dB` for a metric in dB, else the bare number."""
    unit = " dB" if name is not None and "(dB)" in name else ""
    return f"{value:.{digits}f}{unit}"
