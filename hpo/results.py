"""Reading results back from a study: status of every study, the best trial, and its exported config."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import confirm
from hpo.errors import StudyError
from hpo.optuna_private import storage_of
from hpo.outputs import write_output
from hpo.reaper import worker_of
from hpo.spec import json_attr
from model.config import TrainConfig, from_dict, to_toml


@dataclass
class StudyStatus:
    name: str
    direction: str
    counts: dict[str, int]  # trial state name -> count
    best_value: float | None
    best_number: int | None
    running: list[tuple[int, str]]  # (trial number, "host:pid") of RUNNING trials (its `worker` attr)


def study_names(storage: Any) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def load(storage: Any, name: str) -> optuna.Study:
    """Load an existing study; an unknown name is a StudyError listing the known ones."""
    names = study_names(storage)
    if name not in names:
        known = ", ".join(names) if names else "none yet (run `hpo run` first)"
        raise StudyError(f"unknown study {name!r} in this storage: known studies: {known}")
    return optuna.load_study(study_name=name, storage=storage)


def status(study: optuna.Study) -> StudyStatus:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = (max if maximize else min)(complete, key=lambda t: t.value, default=None)  # type: ignore[arg-type,return-value]
    running = [
        (t.number, ":".join("?" if v is None else str(v) for v in worker_of(t)))
        for t in trials
        if t.state == TrialState.RUNNING
    ]
    return StudyStatus(
        study.study_name,
        "maximize" if maximize else "minimize",
        {s.name: counts.get(s.name, 0) for s in TrialState},
        best.value if best else None,
        best.number if best else None,
        running,
    )


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best COMPLETE trial; a study without one is a StudyError."""
    try:
        return study.best_trial
    except ValueError:
        raise StudyError(
            f"study {study.study_name!r} has no complete trial yet: run more trials "
            f"(`hpo run --study {study.study_name}`) or wait for a running one"
        ) from None


def trial_config(study: optuna.Study, trial: FrozenTrial) -> TrainConfig:
    """The complete TrainConfig a trial trained with (stored on the trial by the objective).

    `config` and the study's `fixed` may be JSON values or, as older studies hold them, JSON strings.
    """
    if "config" in trial.user_attrs:
        return from_dict(json_attr(trial.user_attrs["config"]))
    fixed = json_attr(study.user_attrs.get("fixed", {}))
    return from_dict({**fixed, **trial.params})


def raw_best(study: optuna.Study) -> FrozenTrial | None:
    """The best single draw (Optuna's `best_trial`), or None without a complete trial."""
    try:
        return study.best_trial
    except ValueError:
        return None


@dataclass
class Answer:
    """A study's answer: the confirmed winner when confirmation finished, else the raw best trial."""

    trial: FrozenTrial  # the search trial whose config is the answer
    # The reported estimate: when confirmed, the winner's mean over its estimate seeds (held back from the race,
    # so unbiased), or over its race seeds when no estimate round was planned; else the one draw.
    value: float
    values: list[float | None]  # per-seed values, race seeds then estimate seeds (the one draw when not confirmed)
    seeds: list[int]
    confirmed: bool
    interval: tuple[float, float] | None  # 95% t interval of the mean (confirmed, two seeds or more)
    raw: FrozenTrial  # the best single draw
    confirmation: confirm.Confirmation | None  # None: the study has no confirmation (yet)

    def note(self) -> str:
        """One line on how far to trust `value` (what confirmation found, or that it has not run)."""
        c = self.confirmation
        if c is None:
            return (
                "not confirmed over seeds: the value is one training draw, the study's luckiest "
                "(run `hpo run` with [confirm] in the spec, or `hpo top`)"
            )
        if not self.confirmed:
            done = sum(len(r.values) + len(r.estimate_values) for r in c.candidates)
            return f"confirmation in progress ({done} runs done): the value is still the one best draw"
        gap = self.raw.value - self.value if self.raw.value is not None else math.nan
        return f"{_how_estimated(c)}; " + (
            f"the raw single-draw best was {self.raw.value:.2f} dB "
            f"(trial {self.raw.number}), {gap:+.2f} dB above this estimate (the winner's curse on this study)"
        )


def _how_estimated(c: confirm.Confirmation) -> str:
    """Which seeds the confirmed value is the mean of, and whether it was picked on them."""
    w = c.winner
    assert w is not None and c.estimate is not None
    diverged = c.diverged
    if c.estimate_planned and len(diverged) == len(w.estimate_seeds):
        return (
            f"confirmed over the race's seeds {w.seeds}, which picked it (so the mean leans high): it diverged on "
            f"every estimate seed {diverged}, so retraining it can fail"
        )
    if c.estimate_planned:
        failed = f"; it diverged on seed {', '.join(map(str, diverged))}, so retraining it can fail" if diverged else ""
        return (
            f"confirmed: the mean over seeds {c.value_seeds}, held back from the race "
            f"(the race's mean over seeds {w.seeds}, which picked it, was {c.race_mean:.2f} dB){failed}"
        )
    if len(c.candidates) > 1:
        return f"confirmed over seeds {w.seeds}, the seeds that also picked it (so the mean leans high)"
    return f"confirmed over seeds {w.seeds}"


def answer(study: optuna.Study) -> Answer:
    """The study's answer (StudyError without a complete trial)."""
    raw = best_trial(study)
    conf = confirm.load_confirmation(storage_of(study), study.study_name)
    w = conf.winner if conf is not None and conf.finished else None
    if conf is not None and w is not None and conf.estimate is not None:
        trials = study.get_trials(deepcopy=False)
        trial = trials[w.trial] if w.trial < len(trials) else raw  # trial numbers index the study's trials
        iv = conf.estimate
        bounds = (iv.low, iv.high) if iv.low is not None and iv.high is not None else None
        values, seeds = [*w.values, *w.estimate_values], [*w.seeds, *w.estimate_seeds]
        return Answer(trial, iv.mean, values, seeds, True, bounds, raw, conf)
    seed = int(trial_config(study, raw).seed)
    return Answer(raw, float(raw.value), [raw.value], [seed], False, None, raw, conf)  # type: ignore[arg-type]


def confirmation_lines(conf: confirm.Confirmation | None, raw: FrozenTrial | None) -> list[str]:
    """The confirmation as a person reads it: the winner, the raw best beside it, the noise, each candidate."""
    if conf is None:
        return ["not confirmed over seeds (no confirmation has run on this study)"]
    lines = []
    w = conf.winner
    if w is not None and conf.estimate is not None:
        iv = conf.estimate
        ci = f" (95% interval {iv.low:.2f} .. {iv.high:.2f})" if iv.half is not None else ""
        lines.append(f"confirmed: trial {w.trial}'s config, val PSNR {iv.mean:.2f} dB{ci}")
        lines.append(_how_estimated(conf))
        if raw is not None and raw.value is not None:
            lines.append(
                f"raw single-draw best: trial {raw.number}, {raw.value:.2f} dB, {raw.value - iv.mean:+.2f} dB "
                "above the confirmed estimate (the winner's curse)"
            )
    elif w is not None and w.interval is not None:
        state = "race decided, estimating the winner on fresh seeds" if conf.decided else "leading"
        lines.append(
            f"confirmation in progress; {state}: trial {w.trial}'s config, {w.interval.mean:.2f} dB over "
            f"{w.interval.n} race seeds"
        )
    if conf.noise_sd is not None:
        res = f"; two configs closer than {conf.resolvable:.2f} dB cannot be told apart" if conf.resolvable else ""
        lines.append(f"seed noise: sd {conf.noise_sd:.2f} dB (pooled over the candidates' runs){res}")
    for r in conf.candidates:
        vals = ", ".join("failed" if v is None else f"{v:.2f}" for v in r.values) or "no runs yet"
        out = f"dropped after round {r.dropped_after}" if r.dropped_after else "racing" if not conf.finished else "kept"
        if r.estimate_values:
            est = ", ".join("failed" if v is None else f"{v:.2f}" for v in r.estimate_values)
            out += f"; estimate seeds {r.estimate_seeds}: [{est}]"
        lines.append(f"  candidate {r.index} (trial {r.trial}, search {r.search_value:.2f} dB): [{vals}] {out}")
    return lines


def export_toml(study: optuna.Study, ans: Answer, storage_label: str, raw: bool = False) -> str:
    """The answer's complete config (the raw best with `raw`) as TOML with a provenance header (`hpo train`)."""
    trial = ans.raw if raw else ans.trial
    config = trial_config(study, trial)
    what = (
        f"confirmed val PSNR {ans.value:.4f} dB (seeds {_value_seeds(ans)}; all seeds {ans.seeds})"
        if ans.confirmed and not raw
        else f"val PSNR {trial.value:.4f} dB (one training draw, not confirmed over seeds)"
    )
    header = (
        f"vp-hpo export: study {study.study_name}, trial {trial.number}, {what}\n"
        f"storage {storage_label}\nreproduce: hpo train THIS_FILE"
    )
    return to_toml(config, header)


def _value_seeds(ans: Answer) -> list[int]:
    """The seeds `ans.value` is the mean of (the estimate seeds when an estimate round ran)."""
    c = ans.confirmation
    return c.value_seeds if ans.confirmed and c is not None else list(ans.seeds)


def write_export(study: optuna.Study, storage_label: str, path: str, raw: bool = False) -> Answer:
    """Write `export_toml` to `path` atomically (StudyError, one line, when it cannot be written); the answer."""
    ans = answer(study)
    write_output(path, export_toml(study, ans, storage_label, raw), "path")
    return ans


def best_dict(study: optuna.Study) -> dict[str, Any]:
    """`hpo best --json`: the answer with its per-seed values, and the raw best beside it."""
    ans = answer(study)
    trial = ans.trial
    return {
        "study": study.study_name,
        "trial": trial.number,
        "value": ans.value,
        "values": ans.values,
        "seeds": ans.seeds,
        "confirmed": ans.confirmed,
        "value_seeds": _value_seeds(ans),
        "race_value": ans.confirmation.race_mean if ans.confirmed and ans.confirmation else None,
        "interval95": list(ans.interval) if ans.interval else None,
        "raw_best": {"trial": ans.raw.number, "value": ans.raw.value},
        "note": ans.note(),
        "params": trial.params,
        "config": trial_config(study, trial).to_dict(),
        "duration_s": trial.duration.total_seconds() if trial.duration else None,
    }
