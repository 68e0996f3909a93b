"""The search space: `[space.FIELD]` tables parsed into Optuna distributions, probed, and asked of a trial.

Each distribution is checked against its TrainConfig field's type here; `hpo.spec.check_values` then checks
the values it can give against the config's own limits.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.errors import SpecError
from model.config import coerce, field_types

__all__ = ["RUN_SETTINGS", "parse_distribution", "probe_values", "suggest"]

# Run settings are never searched (docs/ARCHITECTURE.md, "The trainer seam"): they say where and how, not what.
RUN_SETTINGS = {
    "data",
    "cache_dir",
    "device",
    "amp",
    "channels_last",
    "compile",
    "time_chunk",
    "out",
    "synth_train_frames",
    "synth_val_videos",
}


_MAX_PROBED = 256  # an int space with more values is probed at its ends and its second value


def probe_values(dist: BaseDistribution) -> list[Any]:
    """Values of a distribution that show whether every value it can give is a valid field value.

    TrainConfig's limits on numbers are intervals (convex) except "a multiple of 8" and the like on ints, so the
    ends of a float range suffice, and an int range is walked (or, when long, its ends and its second value).
    """
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        count = (dist.high - dist.low) // dist.step + 1
        if count <= _MAX_PROBED:
            return list(range(dist.low, dist.high + 1, dist.step))
        return [dist.low, dist.low + dist.step, dist.high]
    assert isinstance(dist, FloatDistribution)
    return [dist.low, dist.high]


def parse_distribution(name: str, d: Any) -> BaseDistribution:
    """One `[space.FIELD]` table -> an Optuna distribution, checked against the field's type."""
    types = field_types()
    if name not in types:
        raise SpecError(f"unknown field {name!r} in the search space: use a TrainConfig field name")
    if name in RUN_SETTINGS:
        raise SpecError(f"{name!r} is a run setting and cannot be searched: move it to [fixed]")
    if not isinstance(d, dict):
        raise SpecError(f"space.{name} must be a table with type, low, high (or choices)")
    kind = d.get("type", "categorical" if "choices" in d else None)
    extra = set(d) - {"type", "low", "high", "log", "step", "choices"}
    if extra:
        raise SpecError(f"space.{name}: unknown keys {sorted(extra)}: use type, low, high, log, step, choices")
    if kind == "categorical":
        numeric = sorted(set(d) & {"low", "high", "log", "step"})
        if numeric:
            raise SpecError(f"space.{name}: a categorical takes choices only, not {numeric}: drop them or the choices")
        choices = d.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"space.{name}: empty categorical: give at least one choice in choices = [...]")
        if any(isinstance(c, (list, dict)) for c in choices):
            raise SpecError(f"space.{name}: choices must be numbers, strings or booleans, got {choices!r}")
        values = [coerce(name, c) for c in choices]
        if len(set(values)) < len(values):
            raise SpecError(f"space.{name}: choices {choices!r} repeat a value: list each choice once")
        return CategoricalDistribution(values)
    if kind not in ("float", "int"):
        raise SpecError(f"space.{name}: type must be float, int or categorical, got {kind!r}")
    if "choices" in d:
        raise SpecError(f'space.{name}: type = "{kind}" takes low and high, not choices: drop one of them')
    if kind == "float" and types[name] is not float:
        raise SpecError(f'space.{name}: field {name} is not a float field: use type = "int" or categorical')
    if kind == "int" and types[name] is not int:
        raise SpecError(f'space.{name}: field {name} is not an int field: use type = "float" or categorical')
    if "low" not in d or "high" not in d:
        raise SpecError(f"space.{name}: give both low and high")
    low, high, log_, step = d["low"], d["high"], d.get("log", False), d.get("step")
    for key, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        _check_number(name, kind, key, value)
    if not isinstance(log_, bool):
        raise SpecError(f"space.{name}: log must be true or false, got {log_!r}")
    if step is not None and step <= 0:
        raise SpecError(f"space.{name}: step must be > 0, got {step}: use a positive step or drop it")
    if step is not None and log_:
        raise SpecError(f"space.{name}: log and step cannot go together: drop one of them")
    if low >= high:
        raise SpecError(f"space.{name}: low ({low}) must be < high ({high}): swap or fix the bounds")
    if log_ and low <= 0:
        raise SpecError(f"space.{name}: log scale needs low > 0 (got {low}): raise low, e.g. to 1e-5")
    span = None if step is None else Decimal(str(high)) - Decimal(str(low))
    if step is not None and span is not None and span % Decimal(str(step)) != 0:
        fix = Decimal(str(low)) + span // Decimal(str(step)) * Decimal(str(step))
        raise SpecError(f"space.{name}: high - low ({high} - {low}) is not a multiple of step {step}: use high = {fix}")
    if kind == "float":
        return FloatDistribution(float(low), float(high), log=log_, step=None if step is None else float(step))
    return IntDistribution(int(low), int(high), log=log_, step=int(step or 1))


def _check_number(name: str, kind: str, key: str, value: Any) -> None:
    """A bound or step of a `type = "int"` space is a whole number, of a float space a finite number."""
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise SpecError(f"space.{name}: {key} of an int space must be a whole number, got {value!r}: e.g. {key} = 1")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"space.{name}: {key} must be a finite number, got {value!r}")


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask the trial for one parameter with the public suggest_* API."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"unsupported distribution {dist!r}")
