"""Confirmation: retrain the study's best candidates over training seeds, race them, and keep the answer.

A study's best trial is its luckiest draw. After the search budget is spent, every worker goes on to confirm:
the best `top_k` distinct configs (by search value) are each trained again with the same list of fresh
training seeds, one round per seed; after each round the racing rule (`hpo.racing`) stops giving seeds to a
candidate clearly behind the leader. The runs are trials of a companion study, `<study>.confirm`, in the same
storage (docs/ARCHITECTURE.md, "Confirmation"):

- the search sampler never sees them (a repeated config with other values would skew TPE/GP, and their count
  would eat the search budget), yet the dashboard shows them, one study beside the search;
- a run's identity is its params, `candidate` and `seed`, so every retry Optuna or the worker makes (heartbeat
  retry, SIGTERM re-queue) carries it; runs are queued WAITING trials that workers claim like any trial, with
  the same heartbeat, reaping, signal handling and lost-connection retries as the search;
- the plan (candidates, seeds, racing settings) is one study attr, written once under the lock; the race's
  state is replayed from the finished runs, so any worker, at any time, derives the same rounds and drops;
- the race picks its winner on the very means that would estimate it, so those means overstate it (selection
  bias); the winner is then trained on `estimate` more seeds the race never saw, and its reported value is their
  mean, an unbiased estimate of what a retrain gives.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.budget import claim_trial
from hpo.errors import SpecError, StudyError
from hpo.locks import study_lock
from hpo.racing import Interval, all_finite, interval, leader, pooled_half, pooled_sd, race, resolvable_difference
from hpo.spec import ConfirmSettings, json_attr
from hpo.worker import TrialSource

__all__ = [
    "CandidateResult",
    "Confirmation",
    "companion_name",
    "load_confirmation",
    "run_distributions",
    "source",
    "start",
    "summarize",
]

log = logging.getLogger(__name__)

PLAN_ATTR = "plan"
SUFFIX = ".confirm"
MAX_SEED = 2**31 - 1
# fail_reasons of runs that did not fail on their own (a dead or interrupted worker, a superseded retry): such a
# run is queued again when no retry of it is pending. Any other FAIL is the config's result (e.g. diverged).
_TRANSIENT = ("interrupted", "worker gone", "slot given back", "superseded")


def companion_name(study_name: str) -> str:
    """The confirmation study of a search study."""
    return study_name + SUFFIX


def is_companion(study_name: str) -> bool:
    return study_name.endswith(SUFFIX)


def run_distributions(top_k: int) -> dict[str, IntDistribution]:
    """The params of a confirmation run: which candidate, trained with which seed."""
    return {"candidate": IntDistribution(0, max(top_k - 1, 0)), "seed": IntDistribution(0, MAX_SEED)}


def _distinct_best(search: optuna.Study, top_k: int) -> list[FrozenTrial]:
    maximize = search.direction == optuna.study.StudyDirection.MAXIMIZE
    complete = [
        t
        for t in search.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))  # type: ignore[operator]
    picked: list[FrozenTrial] = []
    seen: set[str] = set()
    for t in complete:
        key = json.dumps(t.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            picked.append(t)
        if len(picked) == top_k:
            break
    return picked


def _plan(search: optuna.Study, settings: ConfirmSettings, space: str) -> dict[str, Any]:
    best = _distinct_best(search, settings.top_k)
    if not best:
        raise StudyError(
            f"study {search.study_name!r} has no complete trial to confirm: run the search first "
            f"(`hpo run --study {search.study_name}`)"
        )
    configs = [json_attr(t.user_attrs["config"]) if "config" in t.user_attrs else None for t in best]
    base = int(configs[0]["seed"]) if configs[0] is not None and "seed" in configs[0] else 0
    return {
        "search": search.study_name,
        "space": space,
        "candidates": [
            {"trial": t.number, "value": t.value, "params": t.params, "config": c}
            for t, c in zip(best, configs, strict=True)
        ],
        # Fresh seeds: the search trained every candidate with `base`, and picked them on that draw.
        "seeds": [base + 1 + i for i in range(settings.seeds)],
        # Seeds for the winner alone, after the race: its value on them is not the value it was picked on. A lone
        # candidate is picked on nothing the race measures, so its race mean is already unbiased.
        "estimate_seeds": [base + 1 + settings.seeds + i for i in range(settings.estimate)] if len(best) > 1 else [],
        "alpha": settings.alpha,
        "min_seeds": settings.min_seeds,
    }


def start(search: optuna.Study, storage: Any, settings: ConfirmSettings, space: str) -> optuna.Study:
    """Open the companion study, planning it if this worker is the first to confirm.

    `space` is the search space's canonical JSON (`StudySpec.space_json`).

    Raises:
        SpecError: the study's space has changed since its confirmation was planned.
        StudyError: the search has no complete trial.
    """
    name = companion_name(search.study_name)
    with study_lock(search):  # serialises planning: one plan per study, written once
        confirm = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=search.direction,
            load_if_exists=True,
            sampler=optuna.samplers.RandomSampler(seed=0),  # never used: every run is queued with its params
            pruner=optuna.pruners.NopPruner(),  # runs are raced over seeds, never pruned
        )
        plan = confirm.user_attrs.get(PLAN_ATTR)
        if plan is None:
            plan = _plan(search, settings, space)
            confirm.set_user_attr(PLAN_ATTR, plan)
            log.info("confirming %d candidates over up to %d seeds", len(plan["candidates"]), len(plan["seeds"]))
        elif plan.get("space") != space:
            raise SpecError(
                f"the search space of study {search.study_name!r} changed since its confirmation was planned: "
                "confirm with the spec the study ran, or run the changed spec under a new --study-name"
            )
        elif (len(plan["candidates"]), len(plan["seeds"]), plan["alpha"], len(plan.get("estimate_seeds", []))) != (
            min(settings.top_k, len(plan["candidates"])),
            settings.seeds,
            settings.alpha,
            settings.estimate if len(plan["candidates"]) > 1 else 0,
        ):
            log.warning("confirmation of %s was planned with other settings: the recorded plan goes on", name)
    advance(confirm)
    return confirm


@dataclass
class _Runs:
    values: dict[int, list[float | None]]  # candidate -> finished race values in seed order (None: failed)
    pending: set[tuple[int, int]]  # (candidate, seed) WAITING or RUNNING
    done: dict[tuple[int, int], float | None]  # (candidate, seed) -> value of every finished run
    # (candidate, seed) -> the last run of it that failed on no fault of its own (a dead or interrupted worker):
    # a re-queue names it in `retry_of`, so the new run resumes from its checkpoint (hpo.trial_checkpoints)
    lost: dict[tuple[int, int], int] = field(default_factory=dict)


def _runs(confirm: optuna.Study, plan: Mapping[str, Any]) -> _Runs:
    seeds = list(plan["seeds"])
    done: dict[tuple[int, int], float | None] = {}
    pending: set[tuple[int, int]] = set()
    lost: dict[tuple[int, int], int] = {}
    for t in confirm.get_trials(deepcopy=False):
        params = t.params or t.system_attrs.get("fixed_params", {})  # a WAITING run has its params queued only
        if "candidate" not in params or "seed" not in params:
            continue
        key = (int(params["candidate"]), int(params["seed"]))
        if t.state in (TrialState.WAITING, TrialState.RUNNING):
            pending.add(key)
        elif t.state == TrialState.COMPLETE:
            done[key] = t.value
        elif t.state == TrialState.FAIL and key not in done:
            reason = str(t.user_attrs.get("fail_reason", ""))
            if reason and not reason.startswith(_TRANSIENT):
                done[key] = None
            else:
                lost[key] = max(lost.get(key, -1), t.number)
    values: dict[int, list[float | None]] = {}
    for c in range(len(plan["candidates"])):
        values[c] = []
        for s in seeds:
            if (c, s) not in done:
                break
            values[c].append(done[(c, s)])
    return _Runs(values, pending, done, lost)


@dataclass
class _Race:
    alive: set[int]  # candidates still getting seeds
    dropped: dict[int, int]  # candidate -> the round (0-based) after which it was dropped
    current: int  # the round being run (0-based); len(seeds) when every round is done
    decided: bool = False  # one candidate left of several, or every round done
    winner: int | None = None  # the leader once the race is decided
    finished: bool = False  # decided, and the winner's estimate runs are done


def _replay(plan: Mapping[str, Any], runs: _Runs) -> _Race:
    """The race so far, replayed round by round from the finished runs (the same on every worker)."""
    n_candidates, n_seeds = len(plan["candidates"]), len(plan["seeds"])
    race_state = _Race(set(range(n_candidates)), {}, 0)
    for r in range(n_seeds):
        race_state.current = r
        if any(len(runs.values[c]) <= r for c in race_state.alive):
            return race_state
        values = {c: runs.values[c][: r + 1] for c in race_state.alive}
        for c in race(values, plan["alpha"], plan["min_seeds"]):
            race_state.alive.discard(c)
            race_state.dropped[c] = r
        if n_candidates > 1 and len(race_state.alive) == 1:  # a lone candidate from the start gets every seed
            race_state.current = r + 1
            return _decide(plan, runs, race_state)
    race_state.current = n_seeds
    return _decide(plan, runs, race_state)


def _decide(plan: Mapping[str, Any], runs: _Runs, race_state: _Race) -> _Race:
    race_state.decided = True
    race_state.winner = leader({c: runs.values[c] for c in race_state.alive})
    race_state.finished = all((race_state.winner, s) in runs.done for s in plan.get("estimate_seeds", []))
    return race_state


def advance(confirm: optuna.Study) -> bool:
    """Queue the current round's missing runs (under the lock); returns whether confirmation is finished."""
    plan = confirm.user_attrs[PLAN_ATTR]
    with study_lock(confirm):
        runs = _runs(confirm, plan)
        state = _replay(plan, runs)
        if state.finished:
            return True
        if state.winner is not None:  # decided: the winner's estimate runs, all queued at once for every worker
            wanted = [(state.winner, s) for s in plan["estimate_seeds"]]
            attrs = {"round": len(plan["seeds"]) + 1, "phase": "estimate"}
        else:
            wanted = [(c, plan["seeds"][state.current]) for c in sorted(state.alive)]
            attrs = {"round": state.current + 1, "phase": "race"}
        for c, seed in wanted:
            if (c, seed) in runs.done or (c, seed) in runs.pending:
                continue
            retry = {"retry_of": runs.lost[(c, seed)]} if (c, seed) in runs.lost else {}
            confirm.enqueue_trial(
                {"candidate": c, "seed": seed},
                user_attrs={"candidate_trial": plan["candidates"][c]["trial"], **attrs, **retry},
            )
    return False


def source(confirm: optuna.Study) -> TrialSource:
    """The worker's supplier of confirmation runs: queued runs first; done when the race is decided."""
    dists = run_distributions(len(confirm.user_attrs[PLAN_ATTR]["candidates"]))
    finished = [False]  # what the claim's `advance` found: the loop asks `done` right after a claim of nothing

    def claim(beat: ExitStack) -> optuna.Trial | None:
        finished[0] = advance(confirm)
        return claim_trial(confirm, 2**62, distributions=dists, beat=beat, waiting_only=True)

    return TrialSource(claim=claim, done=lambda: finished[0])


@dataclass
class CandidateResult:
    index: int
    trial: int  # the search trial it came from
    search_value: float  # that trial's one draw
    params: dict[str, Any]
    config: dict[str, Any] | None
    seeds: list[int]  # the seeds it has finished runs for
    values: list[float | None]  # their val PSNR (None: the run failed)
    interval: Interval | None  # over `values`; None before its first run
    dropped_after: int | None  # the round after which racing dropped it (1-based), None while it races
    estimate_seeds: list[int] = field(default_factory=list)  # the winner's seeds after the race, finished ones
    estimate_values: list[float | None] = field(default_factory=list)


@dataclass
class Confirmation:
    name: str
    finished: bool
    candidates: list[CandidateResult]
    winner: CandidateResult | None  # the leader among the candidates still racing (provisional until finished)
    noise_sd: float | None  # seed-to-seed sd, pooled over the candidates' runs
    noise_df: int = 0
    resolvable: float | None = None  # smallest difference of two means over the winner's seeds this noise resolves
    seeds_planned: list[int] = field(default_factory=list)
    estimate_planned: list[int] = field(default_factory=list)  # the winner's seeds after the race ([]: none)
    # The winner's reported value: the mean over its estimate seeds (unbiased; its 95% interval uses the pooled
    # seed noise), or over its race seeds when no estimate round is planned. None until finished.
    estimate: Interval | None = None
    decided: bool = False  # the race is over (the winner may still be running its estimate seeds)

    @property
    def diverged(self) -> list[int]:
        """The estimate seeds on which the winner's run failed on its own (diverged): retraining it can fail."""
        w = self.winner
        if w is None:
            return []
        return [s for s, v in zip(w.estimate_seeds, w.estimate_values, strict=True) if not all_finite([v])]

    @property
    def value_seeds(self) -> list[int]:
        """The seeds the reported value is the mean of: the winner's estimate seeds it trained on without
        diverging; its race seeds when no estimate round was planned, or when it diverged on every one."""
        w = self.winner
        if w is None:
            return []
        kept = [s for s in w.estimate_seeds if s not in self.diverged]
        return kept if kept else list(w.seeds)

    @property
    def race_mean(self) -> float | None:
        """The winner's mean over the seeds the race picked it on (biased upwards when it beat others)."""
        return self.winner.interval.mean if self.winner is not None and self.winner.interval is not None else None


def summarize(confirm: optuna.Study) -> Confirmation:
    """The state of a confirmation: each candidate's per-seed values and interval, the winner, the noise."""
    plan = confirm.user_attrs[PLAN_ATTR]
    runs = _runs(confirm, plan)
    state = _replay(plan, runs)
    results = []
    for c, cand in enumerate(plan["candidates"]):
        vals = runs.values[c]
        results.append(
            CandidateResult(
                c,
                int(cand["trial"]),
                float(cand["value"]),
                dict(cand["params"]),
                cand.get("config"),
                list(plan["seeds"][: len(vals)]),
                vals,
                interval(vals) if vals else None,
                state.dropped[c] + 1 if c in state.dropped else None,
            )
        )
    racing = {c: runs.values[c] for c in state.alive if runs.values[c]}
    winner = results[leader(racing)] if racing else None
    planned = list(plan.get("estimate_seeds", []))
    if winner is not None and state.decided:
        for s in planned:
            if (winner.index, s) in runs.done:
                winner.estimate_seeds.append(s)
                winner.estimate_values.append(runs.done[(winner.index, s)])
    noise = pooled_sd([r.values for r in results] + ([winner.estimate_values] if winner else []))
    resolvable = None
    if noise is not None and winner is not None and winner.values:
        resolvable = resolvable_difference(noise[0], noise[1], len(winner.values))
    estimate = None
    if state.finished and winner is not None:
        estimate = _estimate(winner, noise) if planned else winner.interval
    return Confirmation(
        confirm.study_name,
        state.finished,
        results,
        winner,
        noise[0] if noise else None,
        noise[1] if noise else 0,
        resolvable,
        list(plan["seeds"]),
        planned,
        estimate,
        state.decided,
    )


def _estimate(winner: CandidateResult, noise: tuple[float, int] | None) -> Interval | None:
    """The winner's mean over its estimate seeds; the interval's spread is the pooled seed noise (its own two or
    three values would give a t interval with one or two degrees of freedom, several times wider).

    A diverged estimate run is left out of the mean (and named in the answer's note, `Confirmation.diverged`):
    -inf would say nothing about the runs that trained, and is no JSON number. Diverged on every estimate seed,
    the value falls back to the race mean, which the note says leans high.
    """
    finite = [v for v in winner.estimate_values if all_finite([v])]
    if not finite:
        return winner.interval
    own = interval(finite)
    if noise is None:
        return own
    return Interval(own.mean, pooled_half(noise[0], noise[1], own.n), own.n)


def load_confirmation(storage: Any, search_name: str) -> Confirmation | None:
    """The confirmation of a search study, or None when it has none (not run, or not planned yet)."""
    name = companion_name(search_name)
    try:
        confirm = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    if PLAN_ATTR not in confirm.user_attrs:
        return None
    return summarize(confirm)
