"""The figures of `hpo report`: Optuna's own plots where it has one, plotly for the rest.

Every builder returns a `plotly.graph_objects.Figure`, or raises `NoPlot` with the reason a reader should see
in the figure's place (too few trials, nothing recorded yet).

See docs/ARCHITECTURE.md, "Outputs".
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.importance import FanovaImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState

from model.config import TrainConfig
from model.schedules import schedule_table

__all__ = [
    "NoPlot",
    "STATE_COLORS",
    "history_figure",
    "importance_figure",
    "learning_curves_figure",
    "parallel_figure",
    "psnr_per_frame_figure",
    "schedules_figure",
    "slice_figure",
    "states_figure",
]

BEST_K = 5  # learning curves highlighted
HIGHLIGHT = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
STATE_COLORS = {"COMPLETE": "#2ca02c", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#1f77b4", "WAITING": "#999"}
PSNR = "val PSNR (dB)"
_HOVER = "epoch %{x}: %{y:.3f} dB<extra></extra>"


class NoPlot(Exception):
    """A figure cannot be drawn from what the study holds; the message says why."""


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials, best first (direction-aware)."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete_trials(study), key=lambda t: float(t.value or 0.0), reverse=maximize)


def _need_complete(study: optuna.Study, n: int, what: str) -> None:
    have = len(complete_trials(study))
    if have < n:
        raise NoPlot(f"{what} needs at least {n} complete trial{'s' if n > 1 else ''}; this study has {have} so far.")


def _titled(fig: go.Figure, title: str, x: str | None = None, y: str | None = None) -> go.Figure:
    fig.update_layout(title=title, height=420, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    if x is not None:
        fig.update_xaxes(title=x)
    if y is not None:
        fig.update_yaxes(title=y)
    return fig


def _integer_x(fig: go.Figure, n: int) -> go.Figure:
    """Whole-number ticks (epochs, frames) at most ~12 apart, never 1.5."""
    fig.update_xaxes(tick0=1, dtick=max(1, math.ceil(n / 12)))
    return fig


def history_figure(study: optuna.Study) -> go.Figure:
    _need_complete(study, 1, "The optimization history")
    fig = optuna.visualization.plot_optimization_history(study, target_name=PSNR)
    return _titled(fig, "Optimization history")


def importance_figure(study: optuna.Study, seed: int) -> go.Figure:
    """fANOVA importances (seeded, so the report is reproducible); needs two complete trials."""
    _need_complete(study, 2, "Parameter importance")
    evaluator = FanovaImportanceEvaluator(seed=seed)
    try:
        fig = optuna.visualization.plot_param_importances(study, evaluator=evaluator, target_name=PSNR)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. every trial sampled the same point
        raise NoPlot(f"Parameter importance could not be computed: {exc}") from None
    return _titled(fig, "Parameter importances (fANOVA)")


def parallel_figure(study: optuna.Study) -> go.Figure:
    _need_complete(study, 1, "The parallel-coordinate plot")
    fig = optuna.visualization.plot_parallel_coordinate(study, target_name=PSNR)
    return _titled(fig, "Parallel coordinates")


def slice_figure(study: optuna.Study, param: str) -> go.Figure:
    """Optuna's slice plot of the COMPLETE trials, and the PRUNED ones apart (grey crosses at their last value).

    The pruned values are from fewer epochs, so they are drawn as their own trace and never enter a fit (the
    importances and parallel coordinates leave them out): the plot shows where the pruner stopped trials, which
    a slice of complete trials alone hides.
    """
    _need_complete(study, 1, "A slice plot")
    fig = optuna.visualization.plot_slice(study, params=[param], target_name=PSNR)
    pruned = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if param in t.params and t.intermediate_values
    ]
    if pruned:
        last = [max(t.intermediate_values) for t in pruned]
        fig.add_trace(
            go.Scatter(
                x=[t.params[param] for t in pruned],
                y=[t.intermediate_values[e] for t, e in zip(pruned, last, strict=True)],
                mode="markers",
                marker={"symbol": "x", "color": "#999999", "size": 7},
                name="pruned (last value)",
                text=[f"trial {t.number}, pruned after epoch {e}" for t, e in zip(pruned, last, strict=True)],
                hovertemplate="%{text}<br>%{y:.3f} dB<extra></extra>",
            )
        )
        fig.update_layout(showlegend=True)
    return _titled(fig, f"Slice: {param}")


def learning_curves_figure(study: optuna.Study) -> go.Figure:
    """Val PSNR per epoch (intermediate values) of every trial; the best five COMPLETE ones in colour."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        raise NoPlot("No trial has reported a per-epoch val PSNR yet.")
    by_number = {t.number: t for t in trials}
    best = [t.number for t in ranked(study)[:BEST_K] if t.number in by_number]
    fig = go.Figure()
    shown: set[str] = set()
    for t in sorted(trials, key=lambda t: t.number):
        if t.number in best:
            continue
        steps = sorted(t.intermediate_values)
        group = "pruned trials" if t.state == TrialState.PRUNED else "other trials"
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[t.intermediate_values[s] for s in steps],
                mode="lines+markers" if len(steps) == 1 else "lines",
                line={"color": "#bbbbbb", "width": 1, "dash": "dot" if group == "pruned trials" else "solid"},
                name=group,
                legendgroup=group,
                showlegend=group not in shown,
                hovertemplate=f"trial {t.number} ({t.state.name.lower()})<br>{_HOVER}",
            )
        )
        shown.add(group)
    for rank, number in enumerate(best):
        t = by_number[number]
        steps = sorted(t.intermediate_values)
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[t.intermediate_values[s] for s in steps],
                mode="lines+markers",
                line={"color": HIGHLIGHT[rank], "width": 3},
                name=f"#{rank + 1}: trial {t.number} ({t.value:.3f} dB)",
                hovertemplate=f"trial {t.number}<br>{_HOVER}",
            )
        )
    fig = _titled(fig, f"Learning curves (best {min(BEST_K, len(best))} highlighted)", "epoch", PSNR)
    return _integer_x(fig, max(max(t.intermediate_values) for t in trials))


def schedules_figure(config: TrainConfig, trial: FrozenTrial) -> go.Figure:
    """Teacher-forcing ratio and KL beta per epoch of the best config (model.schedules), plus what was recorded."""
    table = schedule_table(config)
    epochs = [t + 1 for t, _, _ in table]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=epochs, y=[r for _, r, _ in table], name="teacher forcing ratio", mode="lines"))
    fig.add_trace(go.Scatter(x=epochs, y=[b for _, _, b in table], name="KL beta", mode="lines"))
    for key, label in (("tfr", "recorded tfr"), ("beta", "recorded beta")):
        values = trial.user_attrs.get(key)
        if isinstance(values, list) and values:
            fig.add_trace(
                go.Scatter(x=list(range(1, len(values) + 1)), y=values, name=label, mode="markers", marker={"size": 7})
            )
    subtitle = (
        f"{config.kl_anneal_type} beta, cycle {config.kl_anneal_cycle}, ratio {config.kl_anneal_ratio:g}; "
        # tfr(t) drops from t = tfr_sde + 1 (0-based, model.schedules), i.e. after 1-based epoch tfr_sde + 1: the
        # plot's axis and every console line count epochs from 1.
        f"tfr {config.tfr:g}, minus {config.tfr_d_step:g} per epoch after epoch {config.tfr_sde + 1}"
    )
    title = f"Schedules of the best config (trial {trial.number})<br><sup>{subtitle}</sup>"
    fig = _titled(fig, title, "epoch", "value")
    fig.update_yaxes(range=[-0.05, 1.05])
    return _integer_x(fig, len(epochs))


def psnr_per_frame_figure(trial: FrozenTrial, key: str) -> go.Figure:
    values = trial.user_attrs.get(key)
    if not isinstance(values, list) or not values:
        raise NoPlot(
            f"Trial {trial.number} has no per-frame PSNR (user attr {key!r}): it ran without `hpo run`'s artifact step."
        )
    mean = [v for v in values if v is not None]
    fig = go.Figure(go.Scatter(x=list(range(1, len(values) + 1)), y=values, mode="lines", name="mean over videos"))
    title = f"PSNR per frame of the best trial ({trial.number}), mean over val videos: {sum(mean) / len(mean):.2f} dB"
    return _integer_x(_titled(fig, title, "predicted frame", "PSNR (dB)"), len(values))


def states_figure(study: optuna.Study) -> go.Figure:
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    if not counts:
        raise NoPlot("The study has no trials yet.")
    names = [s.name for s in TrialState if counts.get(s.name)]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[counts[n] for n in names],
            marker_color=[STATE_COLORS.get(n, "#999") for n in names],
            text=[counts[n] for n in names],
            textposition="auto",
        )
    )
    return _titled(fig, "Trials by state", "state", "trials")


def param_distributions(study: optuna.Study) -> dict[str, Any]:
    """Parameter name -> distribution, as the trials recorded them (the best trial's take precedence)."""
    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        out.update(t.distributions)
    ranked_trials = ranked(study)
    if ranked_trials:
        out.update(ranked_trials[0].distributions)
    return out
