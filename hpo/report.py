"""`hpo report`: one self-contained HTML page about a study.

Sections: summary (spec, storage, sampler, pruner, trials by state, best PSNR and params, the command that
reproduces the study), warnings (best value on a search-space edge, failed trials), optimization history,
parameter importances, parallel coordinates, one slice plot per parameter, learning curves with the best five
highlighted, the best config's schedules, its PSNR per frame, and trial states with fail reasons.

The page opens offline: plotly.js is inlined once in <head> and every figure is a div that uses it.

See docs/ARCHITECTURE.md, "Outputs" (the tuning playbook's checklist).
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
import logging
import math
import shlex
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from plotly.offline import get_plotlyjs

from hpo import report_plots as rp
from hpo.artifacts import PSNR_ATTR
from hpo.confirm import companion_name, load_confirmation
from hpo.optuna_private import storage_of
from hpo.outputs import write_output
from hpo.results import confirmation_lines, raw_best, status, trial_config
from hpo.spec import STUDIES_DIR, json_attr
from model.config import TrainConfig, field_types, from_dict
from model.errors import ConfigError
from model.words import plural

__all__ = ["EDGE_SHARE", "build_report", "edge_warnings", "left_out", "reproduce_command", "write_report"]

log = logging.getLogger(__name__)

EDGE_SHARE = 0.05  # a best value within this share of its range (log-aware) from a bound is "on the edge"
MAX_FAILED_LISTED = 50


def edge_warnings(study: optuna.Study) -> list[str]:
    """One line per numeric parameter whose best value lies within 5% of its range's low or high end.

    The position is measured on the log scale for log distributions, as the sampler saw the range. A line proposes
    a wider bound only one that the config accepts (`kl_anneal_cycle` stops at 1, `tfr` at 0 and 1); a range that
    already reaches the field's limit is said to, with the config's own rule.
    """
    best = rp.ranked(study)
    if not best:
        return []
    trial, out = best[0], []
    config = _config_or_default(study, trial)
    for name, dist in sorted(rp.param_distributions(study).items()):
        if not isinstance(dist, (FloatDistribution, IntDistribution)) or name not in trial.params:
            continue
        low, high, value = float(dist.low), float(dist.high), float(trial.params[name])
        if high <= low:
            continue
        if dist.log:
            share = (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
        else:
            share = (value - low) / (high - low)
        scale = " (log scale)" if dist.log else ""
        for side, near in (("low", share <= EDGE_SHARE), ("high", share >= 1 - EDGE_SHARE)):
            if not near:
                continue
            where = "below" if side == "low" else "above"
            head = (
                f"best {name} = {value:.4g} lies within {EDGE_SHARE:.0%} of the {side.upper()} end of its range "
                f"[{low:.4g}, {high:.4g}]{scale}"
            )
            wider, rule = _wider_bound(config, name, dist, side)
            if wider is None:
                out.append(f"{head}, and the field goes no further ({rule}): the best lies at the field's limit")
            else:
                verb = "lower" if side == "low" else "raise"
                fix = f"{verb} `{side}` in the spec (e.g. to {wider:.4g}) and rerun"
                out.append(f"{head}: the optimum may be {where} it; {fix}")
            break
    return out


def _config_or_default(study: optuna.Study, trial: FrozenTrial) -> TrainConfig:
    """The trial's config, or the defaults when it cannot be read (only its limits are needed)."""
    try:
        return trial_config(study, trial)
    except (ConfigError, json.JSONDecodeError):
        return TrainConfig()


def _wider_bound(
    config: TrainConfig, name: str, dist: FloatDistribution | IntDistribution, side: str
) -> tuple[float | None, str]:
    """A bound past `dist`'s `side` that `config` accepts for `name`, farthest first (half the range, a quarter, a
    tenth; on a log scale 10x, 3x, 1.5x); None with the config's rule when none is accepted."""
    bound, sign = (dist.low, -1) if side == "low" else (dist.high, 1)
    if dist.log:
        tries = [bound * f**sign for f in (10.0, 3.0, 1.5)]
    else:
        tries = [bound + sign * (dist.high - dist.low) * f for f in (0.5, 0.25, 0.1)]
    if isinstance(dist, IntDistribution):  # whole steps past the bound, at least one
        tries = [bound + sign * max(dist.step, round(abs(t - bound) / dist.step) * dist.step) for t in tries]
    if name not in field_types():  # not a TrainConfig field (a hand-made study): no limits known
        return tries[0], ""
    rule = ""
    for value in tries:
        try:
            config.replace(**{name: int(value) if isinstance(dist, IntDistribution) else value})
            return value, ""
        except ConfigError as exc:
            rule = rule or str(exc)
    return None, rule


def reproduce_command(study: optuna.Study, storage_label: str) -> str:
    """The `hpo run` line that reproduces this study as a new one: spec, budget, sampler, pruner, the recorded study
    seed, storage, overrides, and a study name the storage does not hold yet.

    A new name, because the same name would join the finished study, whose budget is spent, and run nothing. The
    budget is the study's COMPLETE + PRUNED count (what `--n-trials` counts). Overrides the workers ran with
    (`--data`, `--device`, `--set`) are recovered by comparing a trial's stored config with spec + params.
    """
    attrs = study.user_attrs
    st = status(study)
    n = st.counts.get("COMPLETE", 0) + st.counts.get("PRUNED", 0)
    spec_path = str(attrs.get("spec_path", ""))
    spec_arg = _spec_argument(spec_path) if spec_path else study.study_name
    parts = ["hpo", "run", "--study", spec_arg, "--n-trials", str(max(n, 1))]
    parts += ["--study-name", _new_name(study)]
    for flag, key in (("--sampler", "sampler"), ("--pruner", "pruner"), ("--seed", "seed"), ("--profile", "profile")):
        if attrs.get(key) not in (None, ""):
            parts += [flag, str(attrs[key])]
    parts += ["--storage", storage_label]
    parts += _override_flags(study)
    return " ".join(shlex.quote(p) for p in parts)


def _new_name(study: optuna.Study) -> str:
    """`NAME-repro`, or `NAME-repro-2`, ...: the first the study's storage does not hold (nor its confirmation)."""
    taken = {s.study_name for s in optuna.get_all_study_summaries(storage_of(study), include_best_trial=False)}
    for i in range(1, len(taken) + 2):
        name = f"{study.study_name}-repro" + (f"-{i}" if i > 1 else "")
        if name not in taken and companion_name(name) not in taken:
            return name
    raise AssertionError("unreachable: more names tried than the storage holds")


def _spec_argument(spec_path: str) -> str:
    """A spec in the project's (or the working dir's) studies/ is named by its stem, any other by its path."""
    p = Path(spec_path)
    for base in (STUDIES_DIR, Path.cwd() / "studies"):
        if p.parent.resolve() == base.resolve() and p.suffix == ".toml":
            return p.stem
    return spec_path


def _override_flags(study: optuna.Study) -> list[str]:
    ranked = rp.ranked(study)
    trials = ranked[:1] or [t for t in study.get_trials(deepcopy=False) if "config" in t.user_attrs][-1:]
    if not trials or "config" not in trials[0].user_attrs:
        return []
    trial = trials[0]
    try:
        ran = trial_config(study, trial)
        fixed = json_attr(study.user_attrs.get("fixed", {}))
        planned = from_dict({**fixed, **trial.params})
    except (ConfigError, json.JSONDecodeError) as exc:
        log.info("cannot recover the run's overrides: %s", exc)
        return []
    flags: list[str] = []
    for name, value in ran.to_dict().items():
        if value == getattr(planned, name):
            continue
        if name in ("data", "device"):
            flags += [f"--{name}", str(value)]
        else:
            flags += ["--set", f"{name}={_set_value(value)}"]
    return flags


def _set_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


# --- the page ----------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;
color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:top} th{background:#f5f5f5}
code,pre{background:#f5f5f5;padding:.1em .3em} pre{padding:.6em;white-space:pre-wrap;word-break:break-all}
.warn{background:#fff4e5;border-left:4px solid #ff9800;padding:.4em .8em;margin:.4em 0}
.note{color:#666;font-style:italic} nav a{margin-right:.8em}
.caveat{background:#eef4fb;border-left:4px solid #1f77b4;padding:.1em .8em;margin:.4em 0}
"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _figure(fig: go.Figure, div_id: str) -> str:
    # plotly.js is in <head> once; fixed div ids ("fig-" so they never clash with a section's id) keep the page
    # identical for the same study.
    return str(
        fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{div_id}", config={"displaylogo": False})
    )


def _plot(build: Callable[[], go.Figure], div_id: str) -> str:
    try:
        return _figure(build(), div_id)
    except rp.NoPlot as exc:
        return f'<p class="note">{html.escape(str(exc))}</p>'


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _summary(study: optuna.Study, storage_label: str) -> str:
    attrs, st = study.user_attrs, status(study)
    total = sum(st.counts.values())
    rows = [
        ["study", study.study_name],
        ["direction", st.direction],
        ["spec", attrs.get("spec_path", "-")],
        ["profile", attrs.get("profile") or "none"],
        ["storage", storage_label],
        ["sampler", f"{attrs.get('sampler', type(study.sampler).__name__)} (seed {attrs.get('seed', '-')})"],
        ["pruner", attrs.get("pruner", type(study.pruner).__name__)],
        ["trials", f"{total}: " + (", ".join(f"{k.lower()} {v}" for k, v in st.counts.items() if v) or "none")],
    ]
    out = _table([], rows)
    best = rp.ranked(study)
    if best:
        b = best[0]
        secs = b.user_attrs.get("seconds")
        out += (
            f"<h3>Best trial: {b.number}, val PSNR {b.value:.4f} dB</h3>"
            + _table(["parameter", "value"], [[k, _fmt(v)] for k, v in sorted(b.params.items())])
            + f"<p>device {html.escape(str(b.user_attrs.get('device', '-')))}, "
            f"{html.escape(str(secs if secs is not None else '-'))} s</p>"
        )
        top = best[: rp.BEST_K]
        names = sorted({k for t in top for k in t.params})
        rows = [[t.number, f"{t.value:.4f}", *[_fmt(t.params.get(k, "")) for k in names]] for t in top]
        out += "<h3>Best trials</h3>" + _table(["trial", "val PSNR (dB)", *names], rows)
    else:
        out += '<p class="note">No trial has finished (COMPLETE) yet: there is no best value or config so far.</p>'
    out += (
        "<h3>Reproduce</h3><p>The same spec, study seed and budget (COMPLETE + PRUNED trials), run as a new study "
        "beside this one, which is left as it is. One worker on the same kind of device repeats its trials; "
        "several workers sample in another order.</p>"
        f"<pre>{html.escape(reproduce_command(study, storage_label))}</pre>"
    )
    return out


def _warnings(study: optuna.Study) -> str:
    lines = edge_warnings(study)
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if failed:
        reasons = Counter(str(t.user_attrs.get("fail_reason", "no reason recorded")) for t in failed)
        top = "; ".join(f"{n}× {r}" for r, n in reasons.most_common(3))
        lines.append(
            f"{len(failed)} of {plural(len(trials), 'trial')} failed ({len(failed) / len(trials):.0%}): {top}. "
            "See Trial states below; a large share means the search space reaches configs that do not train."
        )
    if not lines:
        return '<p class="note">None: no best value on a search-space edge, no failed trial.</p>'
    return "".join(f'<div class="warn">{html.escape(line)}</div>' for line in lines)


def left_out(study: optuna.Study) -> list[str]:
    """What the importances, parallel coordinates and slices leave out: they use COMPLETE trials only.

    A pruned trial's last value is from fewer epochs than a complete one's, so it would rank as a bad config what
    was only a short run: the fANOVA and the parallel coordinates leave pruned trials out rather than mix the two.
    Leaving them out silently hides where the pruner stopped whole regions (on a pruned study every low-lr trial
    may be pruned), so the lines say how many are left out and, per parameter, the values only pruned trials
    reached. The slice plots also show the pruned trials apart, at their last value (`rp.slice_figure`).
    """
    trials = study.get_trials(deepcopy=False)
    complete = rp.complete_trials(study)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    failed = sum(t.state == TrialState.FAIL for t in trials)
    others = [f"{plural(len(pruned), 'PRUNED trial')}"] if pruned else []
    others += [f"{plural(failed, 'FAILED trial')}"] if failed else []
    head = f"These plots use the {plural(len(complete), 'COMPLETE trial')} only"
    if not others:
        return [f"{head}; no trial was pruned or failed, so none is left out."]
    lines = [f"{head} (of {plural(len(trials), 'trial')}): {' and '.join(others)} are left out."]
    if pruned:
        at = Counter(max(t.intermediate_values) for t in pruned if t.intermediate_values)
        epochs = ", ".join(f"epoch {e} ({c}×)" for e, c in sorted(at.items()))
        lines[0] += (
            f" The pruned trials stopped after {epochs or 'no epoch'}: their values are from shorter runs and do "
            "not compare with a complete trial's."
        )
    lines += _pruned_only(complete, pruned, rp.param_distributions(study))
    return lines


def _pruned_only(complete: list[FrozenTrial], pruned: list[FrozenTrial], dists: dict[str, Any]) -> list[str]:
    """Per numeric parameter, the pruned trials outside every complete trial's values: what the plots hide."""
    out = []
    for name, dist in sorted(dists.items()):
        if not isinstance(dist, (FloatDistribution, IntDistribution)):
            continue
        done = [float(t.params[name]) for t in complete if name in t.params]
        stopped = [float(t.params[name]) for t in pruned if name in t.params]
        if not done or not stopped:
            continue
        below = sum(v < min(done) for v in stopped)
        above = sum(v > max(done) for v in stopped)
        for count, where, edge in ((below, "below", min(done)), (above, "above", max(done))):
            if count:
                out.append(
                    f"{name}: {plural(count, 'pruned trial')} {where} {edge:.4g}, where no trial completed "
                    "(absent from these plots)"
                )
    return out


def _left_out_html(study: optuna.Study) -> str:
    if not rp.complete_trials(study):
        return ""
    lines = left_out(study)
    return '<div class="caveat">' + "".join(f"<p>{html.escape(line)}</p>" for line in lines) + "</div>"


def _slices(study: optuna.Study) -> str:
    dists = rp.param_distributions(study)
    if not dists:
        return '<p class="note">No finished trial has parameters yet.</p>'
    edges = edge_warnings(study)
    out = [_left_out_html(study)]
    for i, name in enumerate(sorted(dists)):
        for line in edges:
            if line.startswith(f"best {name} = "):
                out.append(f'<div class="warn">{html.escape(line)}</div>')
        out.append(_plot(functools.partial(rp.slice_figure, study, name), f"slice-{i}"))
    return "".join(out)


def _importances(study: optuna.Study, seed: int) -> str:
    return _left_out_html(study) + _plot(lambda: rp.importance_figure(study, seed), "imp")


def _parallel(study: optuna.Study) -> str:
    return _left_out_html(study) + _plot(lambda: rp.parallel_figure(study), "parallel")


def _best_config(study: optuna.Study) -> tuple[FrozenTrial, TrainConfig] | None:
    best = rp.ranked(study)
    if not best:
        return None
    try:
        return best[0], trial_config(study, best[0])
    except (ConfigError, json.JSONDecodeError) as exc:
        log.warning("best trial %d: stored config unreadable (%s)", best[0].number, exc)
        return None


def _schedules(study: optuna.Study) -> str:
    found = _best_config(study)
    if found is None:
        return '<p class="note">No complete trial yet, so no best config to plot the schedules of.</p>'
    trial, config = found
    return _plot(lambda: rp.schedules_figure(config, trial), "schedules")


def _per_frame(study: optuna.Study) -> str:
    best = rp.ranked(study)
    if not best:
        return '<p class="note">No complete trial yet.</p>'
    return _plot(lambda: rp.psnr_per_frame_figure(best[0], PSNR_ATTR), "psnr-per-frame")


def _states(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    out = _plot(lambda: rp.states_figure(study), "states")
    if not trials:
        return out
    n = len(trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    out += _table(
        ["", "trials", "share"],
        [["pruned", len(pruned), f"{len(pruned) / n:.0%}"], ["failed", len(failed), f"{len(failed) / n:.0%}"]],
    )
    if pruned:
        at = Counter(max(t.intermediate_values) for t in pruned if t.intermediate_values)
        out += "<p>Pruned after epoch: " + html.escape(", ".join(f"{e} ({c}×)" for e, c in sorted(at.items()))) + "</p>"
    if failed:
        rows = [
            [t.number, t.user_attrs.get("fail_reason", "no reason recorded"), json.dumps(t.params, default=str)]
            for t in failed[:MAX_FAILED_LISTED]
        ]
        out += "<h3>Failed trials</h3>" + _table(["trial", "fail reason", "params"], rows)
        if len(failed) > MAX_FAILED_LISTED:
            out += f'<p class="note">… and {len(failed) - MAX_FAILED_LISTED} more.</p>'
    return out


def _confirmation(study: optuna.Study) -> str:
    """The confirmation's answer and each candidate's per-seed values, interval and the round it dropped out."""
    conf = load_confirmation(storage_of(study), study.study_name)
    lines = confirmation_lines(conf, raw_best(study))
    out = "".join(f"<p>{html.escape(line)}</p>" for line in lines if not line.startswith("  "))
    if conf is None:
        return out
    # The estimate seeds (the winner's, after the race) are columns of their own, marked, after the race's.
    header = ["candidate", "trial", "search value", *[f"seed {s}" for s in conf.seeds_planned]]
    header += [f"seed {s} (estimate)" for s in conf.estimate_planned]
    header += ["race mean", "95% interval", "status"]
    rows = []
    for r in conf.candidates:
        vals = ["failed" if v is None else f"{v:.2f}" for v in r.values]
        vals += ["-"] * (len(conf.seeds_planned) - len(vals))
        vals += ["failed" if v is None else f"{v:.2f}" for v in r.estimate_values]
        vals += ["-"] * (len(conf.estimate_planned) - len(r.estimate_values))
        iv = r.interval
        mean = "-" if iv is None else f"{iv.mean:.2f}"
        bounds = "-" if iv is None or iv.half is None else f"{iv.low:.2f} .. {iv.high:.2f}"
        status = f"dropped after round {r.dropped_after}" if r.dropped_after else "kept" if conf.finished else "racing"
        if conf.winner is not None and r.index == conf.winner.index:
            status = "winner" if conf.finished else "leading"
        rows.append([r.index, r.trial, f"{r.search_value:.2f}", *vals, mean, bounds, status])
    return out + _table(header, rows)


def build_report(study: optuna.Study, storage_label: str, now: dt.datetime | None = None) -> str:
    """The whole report as one HTML string (plotly.js inlined once); renders whatever the study holds."""
    now = now or dt.datetime.now(dt.UTC)
    seed = int(study.user_attrs.get("seed", 0) or 0)
    sections = [
        ("summary", "Summary", lambda: _summary(study, storage_label)),
        ("warnings", "Warnings", lambda: _warnings(study)),
        ("confirmation", "Confirmation over seeds", lambda: _confirmation(study)),
        ("history", "Optimization history", lambda: _plot(lambda: rp.history_figure(study), "history")),
        ("importances", "Parameter importances", lambda: _importances(study, seed)),
        ("parallel", "Parallel coordinates", lambda: _parallel(study)),
        ("slices", "Slice plots", lambda: _slices(study)),
        ("curves", "Learning curves", lambda: _plot(lambda: rp.learning_curves_figure(study), "curves")),
        ("schedules", "Schedules of the best config", lambda: _schedules(study)),
        ("per-frame", "PSNR per frame of the best trial", lambda: _per_frame(study)),
        ("states", "Trial states", lambda: _states(study)),
    ]
    nav = "".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{make()}</section>' for sid, t, make in sections)
    name = html.escape(study.study_name)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>vp-hpo report: {name}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<h1>Study {name}</h1><p class='note'>vp-hpo report generated {now:%Y-%m-%d %H:%M} UTC</p>"
        f"<nav>{nav}</nav>{body}</body></html>\n"
    )


def write_report(study: optuna.Study, storage_label: str, path: str | Path) -> None:
    """Build the report and write it atomically (a temp file renamed over `path`: never half-written).

    Raises: StudyError when `path` cannot be written.
    """
    write_output(path, build_report(study, storage_label))
