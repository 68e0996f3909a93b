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
    IntDistribution,
    distribution_to_json,
)

from hpo.errors import SpecError
from hpo.optuna_private import contains
from hpo.space import parse_distribution, probe_values
from model.config import MAX_SEED, TrainConfig, coerce, from_dict, read_toml
from model.errors import ConfigError

log = logging.getLogger(__name__)

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
_TOP_KEYS = {"study", "sampler", "pruner", "fixed", "space", "enqueue", "profiles", "confirm"}
SMALL_PROFILE = "small"  # the profile sized for the built-in synthetic set on a CPU


@dataclass
class ConfirmSettings:
    """`[confirm]`: after the search, retrain the best candidates over seeds and race them (hpo.confirm).

    The table's presence turns it on (`enabled = false` turns it off); see docs/ARCHITECTURE.md, "Confirmation".
    """

    enabled: bool = False
    top_k: int = 3  # candidates: the best distinct configs by search value
    seeds: int = 3  # the most training seeds each candidate gets (seeds seed+1 .. seed+S of the trials' `seed`)
    alpha: float = 0.1  # one-sided level of the paired t-test that drops a candidate; 0 = no racing
    min_seeds: int = 2  # seeds every candidate gets before any is dropped
    estimate: int = 2  # fresh seeds for the winner after the race; its reported value is their mean (0: the race's)

    def check(self, where: str) -> ConfirmSettings:
        """Raise SpecError naming `where` (the table or flag) for a setting out of range."""
        checks = (
            ("top_k", self.top_k, 1),
            ("seeds", self.seeds, 1),
            ("min_seeds", self.min_seeds, 2),
            ("estimate", self.estimate, 0),
        )
        for name, value, low in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SpecError(f"{where}: {name} must be a whole number >= {low}, got {value!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not 0 <= self.alpha < 0.5:
            raise SpecError(f"{where}: alpha must be a number in [0, 0.5) (0 = no racing), got {self.alpha!r}")
        return self


def _confirm(table: Any, where: str, base: ConfirmSettings | None = None) -> ConfirmSettings:
    if not isinstance(table, dict):
        raise SpecError(f"{where} must be a table of top_k, seeds, alpha, min_seeds, estimate (and enabled)")
    allowed = {"enabled", "top_k", "seeds", "alpha", "min_seeds", "estimate"}
    unknown = set(table) - allowed
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}: use {', '.join(sorted(allowed))}")
    values = {**(base.__dict__ if base else {}), "enabled": True, **table}
    if not isinstance(values["enabled"], bool):
        raise SpecError(f"{where}: enabled must be true or false, got {values['enabled']!r}")
    return ConfirmSettings(**values).check(where)


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
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)
    profile: str = ""  # the profile applied, "" for none
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    keep_weights: int = 3  # `[study] keep_weights`: the best trials whose final weights are kept (0: none)

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
    study, sampler, pruner = (_table(raw, key, f"{path}: [{key}]") for key in ("study", "sampler", "pruner"))
    seed = study.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise SpecError(f"{path}: [study] seed must be a whole number in 0..{MAX_SEED}, got {seed!r}")
    spec = StudySpec(
        name=_text(study, "name", path.stem, f"{path}: [study]"),
        path=path,
        direction=_text(study, "direction", "maximize", f"{path}: [study]"),
        seed=seed,
        sampler=_text(sampler, "name", "tpe", f"{path}: [sampler]"),
        sampler_options=_table(sampler, "options", f"{path}: [sampler.options]"),
        pruner=_text(pruner, "name", "hyperband", f"{path}: [pruner]"),
        pruner_options=_table(pruner, "options", f"{path}: [pruner.options]"),
        profiles=_table(raw, "profiles", f"{path}: [profiles]"),
    )
    spec.keep_weights = study.get("keep_weights", spec.keep_weights)
    if isinstance(spec.keep_weights, bool) or not isinstance(spec.keep_weights, int) or spec.keep_weights < 0:
        raise SpecError(
            f"{path}: [study] keep_weights must be a whole number >= 0 (the best trials whose final weights are "
            f"kept for `hpo predict --trial`; 0 keeps none), got {spec.keep_weights!r}"
        )
    if spec.direction not in ("maximize", "minimize"):
        raise SpecError(f"{path}: direction must be maximize or minimize, got {spec.direction!r}")
    fixed = _table(raw, "fixed", f"{path}: [fixed]")
    space_raw = _table(raw, "space", f"{path}: [space]")
    _enqueue_list(raw, f"{path}: [[enqueue]]")
    if profile:
        if profile not in spec.profiles:
            raise SpecError(f"{path}: unknown profile {profile!r}: use one of {sorted(spec.profiles) or 'none'}")
        prof = _table(spec.profiles, profile, f"{path}: [profiles.{profile}]")
        for key in ("fixed", "space"):
            _table(prof, key, f"{path}: [profiles.{profile}.{key}]")
        _enqueue_list(prof, f"{path}: [[profiles.{profile}.enqueue]]")
        extra = set(prof) - {"description", "fixed", "space", "enqueue", "pruner", "confirm"}
        if extra:
            raise SpecError(
                f"{path}: profile {profile!r} has unknown keys {sorted(extra)}: use fixed, space, enqueue, pruner, "
                "confirm"
            )
        if "pruner" in prof:  # a profile with fewer epochs may need other rungs: its options replace the spec's
            if not isinstance(prof["pruner"], dict):
                raise SpecError(f"{path}: [profiles.{profile}.pruner] must be a table with name and/or options")
            spec.pruner = _text(prof["pruner"], "name", spec.pruner, f"{path}: [profiles.{profile}.pruner]")
            spec.pruner_options = _table(prof["pruner"], "options", f"{path}: [profiles.{profile}.pruner.options]")
        fixed.update(prof.get("fixed", {}))
        space_raw.update(prof.get("space", {}))
        if "enqueue" in prof:  # a profile that narrows the space brings its own warm-start configs
            raw = {**raw, "enqueue": prof["enqueue"]}
        spec.profile = profile
    if "confirm" in raw:
        spec.confirm = _confirm(raw["confirm"], f"{path}: [confirm]")
    if profile and "confirm" in spec.profiles[profile]:  # its keys replace the spec's
        spec.confirm = _confirm(
            spec.profiles[profile]["confirm"], f"{path}: [profiles.{profile}.confirm]", spec.confirm
        )
    spec.fixed = {k: coerce(k, v) for k, v in fixed.items()}
    spec.space = {k: parse_distribution(k, v) for k, v in space_raw.items()}
    overlap = set(spec.fixed) & set(spec.space)
    if overlap:
        raise SpecError(f"{path}: {sorted(overlap)} both fixed and searched: remove them from one of the tables")
    spec.base_config()  # validates the fixed fields' values
    spec.enqueue = [_check_enqueued(spec, dict(e)) for e in raw.get("enqueue", [])]
    check_values(spec)
    _warn_cycle(spec)
    return spec


def check_values(spec: StudySpec, overrides: dict[str, Any] | None = None) -> None:
    """Every value the spec can give a trial is a valid TrainConfig value: space bounds, choices, enqueued configs.

    Each searched value is checked over the fixed fields (and `overrides`), so a study never starts with a space
    whose trials would fail on a value TrainConfig refuses.

    Raises:
        SpecError: naming the space or [[enqueue]] entry, the value, TrainConfig's reason and the fix.
    """
    base = spec.base_config(overrides)
    for name, dist in spec.space.items():
        for value in probe_values(dist):
            try:
                base.replace(**{name: value})
            except ConfigError as exc:
                raise SpecError(
                    f"{spec.path}: space.{name} can give {name} = {value!r}, which is not valid ({exc}): "
                    "narrow the space to valid values"
                ) from None
    for i, params in enumerate(spec.enqueue):
        try:
            base.replace(**params)
        except ConfigError as exc:
            raise SpecError(f"{spec.path}: [[enqueue]] config {i + 1} is not valid ({exc}): fix or remove it") from None


def _table(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """raw[key] as a dict ({} when absent); anything else than a TOML table is a SpecError naming `where`."""
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be a table (a [header] with key = value lines), got {value!r}")
    return dict(value)


def _text(table: dict[str, Any], key: str, default: str, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise SpecError(f'{where}: {key} must be a non-empty string, got {value!r}: e.g. {key} = "{default}"')
    return value


def _enqueue_list(raw: dict[str, Any], where: str) -> None:
    """[[enqueue]] is an array of tables, one per config; `[enqueue]` (one table) is a common slip."""
    value = raw.get("enqueue", [])
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise SpecError(f"{where} must be an array of tables: write each config under its own [[enqueue]] header")


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


def json_attr(value: Any) -> Any:
    """A structured user attr as stored: a JSON value, or (older studies) a JSON string of one."""
    return json.loads(value) if isinstance(value, str) else value


def space_text(stored: Any) -> str:
    """A study's recorded space as `StudySpec.space_json` writes it (older studies stored that string itself)."""
    return stored if isinstance(stored, str) else json.dumps(stored, sort_keys=True)


def spec_summary(spec: StudySpec) -> dict[str, Any]:
    """What is stored on the study (user attrs) so any worker, `status` and `report` see the same truth."""
    return {
        "spec_path": str(spec.path),
        "profile": spec.profile,
        "space": json.loads(spec.space_json()),  # JSON values, not strings: the dashboard shows them readably
        "fixed": dict(sorted(spec.fixed.items())),
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
    if "space" in attrs and space_text(attrs["space"]) != spec.space_json():
        raise SpecError(
            f"study {study.study_name!r} exists with a different search space (profile "
            f"{attrs.get('profile') or 'none'!r}): name a new study with --study-name {study.study_name}-2"
        )
