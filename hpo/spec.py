"""Study specs (`studies/NAME.toml`): parsed and validated against TrainConfig before anything runs.

A spec names the study, its sampler and pruner (with options), the fixed TrainConfig fields of every trial,
the search space (TrainConfig field -> distribution), warm-start configs to enqueue, and profiles: named
overrides of `fixed`, `space`, `enqueue` and `pruner` (the `small` profile is what runs when no data set is given).
See docs/ARCHITECTURE.md, "Study specs".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from hpo.errors import SpecError
from hpo.optuna_private import contains
from model.config import TrainConfig, coerce, field_types, from_dict, read_toml
from model.errors import ConfigError

log = logging.getLogger(__name__)

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
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
_TOP_KEYS = {"study", "sampler", "pruner", "fixed", "space", "enqueue", "profiles"}
SMALL_PROFILE = "small"  # the profile sized for the built-in synthetic set on a CPU


@dataclass
class StudySpec:
    name: str
    path: Path
    direction: str = "maximize"
    seed: int = 0
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "hyperband"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, BaseDistribution] = field(default_factory=dict)
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    profile: str = ""  # the profile applied, "" for none
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def space_json(self) -> str:
        """Canonical JSON of the search space: stored on the study to detect a changed space on reuse."""
        return json.dumps(
            {k: json.loads(distribution_to_json(d)) for k, d in sorted(self.space.items())}, sort_keys=True
        )

    def base_config(self, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The fixed fields (+ overrides) as a validated TrainConfig: what every trial starts from."""
        return from_dict({**self.fixed, **(overrides or {})})

    def trial_config(self, params: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Fixed fields, then the trial's sampled params, then CLI overrides of run settings."""
        return from_dict({**self.fixed, **params, **(overrides or {})})


def find_spec(name_or_path: str) -> Path:
    """`vp-bo` -> studies/vp-bo.toml (cwd first, then the package's); a path to a .toml is taken as is."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or "/" in name_or_path:
        if not p.is_file():
            raise SpecError(f"study spec {name_or_path!r} not found: check the path")
        return p
    for base in (Path.cwd() / "studies", STUDIES_DIR):
        if (base / f"{name_or_path}.toml").is_file():
            return base / f"{name_or_path}.toml"
    known = sorted(q.stem for q in STUDIES_DIR.glob("*.toml"))
    raise SpecError(f"unknown study {name_or_path!r}: use one of {', '.join(known)} or a path to a spec .toml")


def load_spec(name_or_path: str, profile: str | None = None) -> StudySpec:
    """Read and validate a spec; `profile` names a [profiles.X] table to apply (None/"" = none).

    Raises: SpecError (a ConfigError subclass is re-raised as SpecError with the spec's path).
    """
    path = find_spec(name_or_path)
    return _parse_file(_read(path), path, profile)


def load_run_spec(name_or_path: str, profile: str | None, data: str | None) -> StudySpec:
    """The spec `hpo run` uses: `profile` when given, else `small` when the trials use no data set.

    `data` is the data set given on the command line (None: the spec's own `fixed.data`); with none at all the
    trials run on the built-in synthetic set, which the spec's `small` profile is sized for.
    """
    path = find_spec(name_or_path)
    raw = _read(path)
    if profile is None:
        fixed = raw.get("fixed", {})
        uses_data = bool(data if data is not None else fixed.get("data", "") if isinstance(fixed, dict) else "")
        profiles = raw.get("profiles", {})
        profile = SMALL_PROFILE if not uses_data and isinstance(profiles, dict) and SMALL_PROFILE in profiles else ""
    return _parse_file(raw, path, profile)


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_toml(path)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None


def _parse_file(raw: dict[str, Any], path: Path, profile: str | None) -> StudySpec:
    try:
        return _parse(raw, path, profile)
    except ConfigError as exc:
        raise SpecError(f"{path}: {exc}") from None


def _parse(raw: dict[str, Any], path: Path, profile: str | None) -> StudySpec:
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown table(s) {sorted(unknown)}: use {sorted(_TOP_KEYS)}")
    study = raw.get("study", {})
    spec = StudySpec(
        name=str(study.get("name", path.stem)),
        path=path,
        direction=str(study.get("direction", "maximize")),
        seed=int(study.get("seed", 0)),
        sampler=str(raw.get("sampler", {}).get("name", "tpe")),
        sampler_options=dict(raw.get("sampler", {}).get("options", {})),
        pruner=str(raw.get("pruner", {}).get("name", "hyperband")),
        pruner_options=dict(raw.get("pruner", {}).get("options", {})),
        profiles=dict(raw.get("profiles", {})),
    )
    if spec.direction not in ("maximize", "minimize"):
        raise SpecError(f"{path}: direction must be maximize or minimize, got {spec.direction!r}")
    fixed = dict(raw.get("fixed", {}))
    space_raw = dict(raw.get("space", {}))
    if profile:
        if profile not in spec.profiles:
            raise SpecError(f"{path}: unknown profile {profile!r}: use one of {sorted(spec.profiles) or 'none'}")
        prof = spec.profiles[profile]
        extra = set(prof) - {"description", "fixed", "space", "enqueue", "pruner"}
        if extra:
            raise SpecError(
                f"{path}: profile {profile!r} has unknown keys {sorted(extra)}: use fixed, space, enqueue, pruner"
            )
        if "pruner" in prof:  # a profile with fewer epochs may need other rungs: its options replace the spec's
            if not isinstance(prof["pruner"], dict):
                raise SpecError(f"{path}: [profiles.{profile}.pruner] must be a table with name and/or options")
            spec.pruner = str(prof["pruner"].get("name", spec.pruner))
            spec.pruner_options = dict(prof["pruner"].get("options", {}))
        fixed.update(prof.get("fixed", {}))
        space_raw.update(prof.get("space", {}))
        if "enqueue" in prof:  # a profile that narrows the space brings its own warm-start configs
            raw = {**raw, "enqueue": prof["enqueue"]}
        spec.profile = profile
    spec.fixed = {k: coerce(k, v) for k, v in fixed.items()}
    spec.space = {k: parse_distribution(k, v) for k, v in space_raw.items()}
    overlap = set(spec.fixed) & set(spec.space)
    if overlap:
        raise SpecError(f"{path}: {sorted(overlap)} both fixed and searched: remove them from one of the tables")
    spec.base_config()  # validates the fixed fields' values
    spec.enqueue = [_check_enqueued(spec, dict(e)) for e in raw.get("enqueue", [])]
    _warn_cycle(spec)
    return spec


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
        choices = d.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"space.{name}: empty categorical: give at least one choice in choices = [...]")
        return CategoricalDistribution([coerce(name, c) for c in choices])
    if kind not in ("float", "int"):
        raise SpecError(f"space.{name}: type must be float, int or categorical, got {kind!r}")
    if kind == "float" and types[name] is not float:
        raise SpecError(f'space.{name}: field {name} is not a float field: use type = "int" or categorical')
    if kind == "int" and types[name] is not int:
        raise SpecError(f'space.{name}: field {name} is not an int field: use type = "float" or categorical')
    if "low" not in d or "high" not in d:
        raise SpecError(f"space.{name}: give both low and high")
    low, high, log_, step = d["low"], d["high"], bool(d.get("log", False)), d.get("step")
    if low >= high:
        raise SpecError(f"space.{name}: low ({low}) must be < high ({high}): swap or fix the bounds")
    if log_ and low <= 0:
        raise SpecError(f"space.{name}: log scale needs low > 0 (got {low}): raise low, e.g. to 1e-5")
    if kind == "float":
        return FloatDistribution(float(low), float(high), log=log_, step=None if step is None else float(step))
    return IntDistribution(int(low), int(high), log=log_, step=int(step or 1))


def _check_enqueued(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if k not in spec.space:
            raise SpecError(f"[[enqueue]] sets {k!r}, which is not in the search space: enqueue searched fields only")
        v = coerce(k, v)
        if not contains(spec.space[k], v):
            raise SpecError(f"[[enqueue]] value {k}={v!r} is outside its search space")
        out[k] = v
    return out


def _warn_cycle(spec: StudySpec) -> None:
    """M >= T makes every Cyclical period one epoch, i.e. beta == 0; say so when the space allows it.

    See docs/ARCHITECTURE.md, "Schedules".
    """
    epochs = spec.fixed.get("epochs", TrainConfig.epochs)
    d = spec.space.get("kl_anneal_cycle")
    high = d.high if isinstance(d, IntDistribution) else spec.fixed.get("kl_anneal_cycle", TrainConfig.kl_anneal_cycle)
    if high >= epochs:
        log.warning(
            "kl_anneal_cycle can reach %s with only %s epochs: Cyclical beta is then 0 every epoch; "
            "narrow the cycle range in the spec",
            high,
            epochs,
        )


def spec_summary(spec: StudySpec) -> dict[str, Any]:
    """What is stored on the study (user attrs) so any worker, `status` and `report` see the same truth."""
    return {
        "spec_path": str(spec.path),
        "profile": spec.profile,
        "space": spec.space_json(),
        "fixed": json.dumps(spec.fixed, sort_keys=True),
        "direction": spec.direction,
    }


def check_compatible(study: optuna.Study, spec: StudySpec) -> None:
    """An existing study must have the same direction and search space as the spec."""
    attrs = study.user_attrs
    direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    if direction != spec.direction:
        raise SpecError(
            f"study {study.study_name!r} exists with direction {direction}, the spec says "
            f"{spec.direction}: name a new study with --study-name {study.study_name}-2"
        )
    if "space" in attrs and attrs["space"] != spec.space_json():
        raise SpecError(
            f"study {study.study_name!r} exists with a different search space (profile "
            f"{attrs.get('profile') or 'none'!r}): name a new study with --study-name {study.study_name}-2"
        )


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask the trial for one parameter with the public suggest_* API."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"unsupported distribution {dist!r}")
