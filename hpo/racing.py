"""The statistics of confirmation: which candidates stay in the race, and what the answer's numbers mean.

Pure functions of per-seed values (no Optuna, no storage), so every decision is tested on fixed numbers.
Every candidate is trained with the same list of training seeds (common random numbers): a seed that suits
the model lifts all candidates alike, so the per-seed DIFFERENCES between two candidates vary much less than
their values. The racing rule is therefore a paired one-sided t-test of each candidate against the leader
(docs/ARCHITECTURE.md, "Confirmation"): an unpaired confidence bound would ignore that pairing and need several
times the seeds to drop the same candidate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

__all__ = ["Interval", "all_finite", "interval", "leader", "pooled_half", "pooled_sd", "race", "resolvable_difference"]


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its two-sided 95% t interval (`half` is None with fewer than two seeds)."""

    mean: float
    half: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half


def all_finite(values: Sequence[float | None]) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def interval(values: Sequence[float | None], level: float = 0.95) -> Interval:
    """Mean and t interval of per-seed values; a diverged seed (None/NaN) makes the mean -inf."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    if not all_finite(values):
        return Interval(-math.inf, None, n)
    xs = [float(v) for v in values if v is not None]
    mean = statistics.fmean(xs)
    if n < 2:
        return Interval(mean, None, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(xs) / math.sqrt(n)
    return Interval(mean, half, n)


def leader(values: Mapping[int, Sequence[float | None]]) -> int:
    """The candidate with the highest mean over its seeds (ties: the lower index, i.e. the better search value)."""
    return max(sorted(values), key=lambda c: interval(values[c]).mean)


def race(values: Mapping[int, Sequence[float | None]], alpha: float, min_seeds: int) -> set[int]:
    """The candidates to drop after a round, given each alive candidate's values on the same seeds, in order.

    A candidate is dropped when a paired one-sided t-test on its per-seed differences from the leader rejects
    "it is at least as good" at level `alpha`, once every candidate has `min_seeds` seeds (>= 2). A candidate
    with a diverged seed (None/NaN) is dropped whenever the leader has none. `alpha == 0` never drops (no racing).
    """
    if alpha <= 0 or len(values) < 2:
        return set()
    n = min(len(v) for v in values.values())
    if n < max(2, min_seeds):
        return set()
    best = leader(values)
    lead = [values[best][i] for i in range(n)]
    if not all_finite(lead):
        return set()
    critical = float(stats.t.ppf(1 - alpha, n - 1))
    dropped = set()
    for c, vals in values.items():
        if c == best:
            continue
        own = [vals[i] for i in range(n)]
        if not all_finite(own):
            dropped.add(c)
            continue
        diffs = [float(a) - float(b) for a, b in zip(own, lead, strict=True)]  # type: ignore[arg-type]
        mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
        if mean >= 0:
            continue
        if sd == 0 or mean / (sd / math.sqrt(n)) < -critical:
            dropped.add(c)
    return dropped


def pooled_sd(groups: Sequence[Sequence[float | None]]) -> tuple[float, int] | None:
    """The seed-to-seed standard deviation pooled over candidates, and its degrees of freedom (None if < 1)."""
    ss, df = 0.0, 0
    for g in groups:
        xs = [float(v) for v in g if v is not None and math.isfinite(v)]
        if len(xs) >= 2:
            ss += statistics.variance(xs) * (len(xs) - 1)
            df += len(xs) - 1
    return (math.sqrt(ss / df), df) if df else None


def pooled_half(sd: float, df: int, n: int, level: float = 0.95) -> float:
    """Half-width of the two-sided t interval of a mean over `n` seeds, the seed noise `sd` pooled with `df`."""
    return float(stats.t.ppf(0.5 + level / 2, df)) * sd / math.sqrt(n)


def resolvable_difference(sd: float, df: int, n: int, level: float = 0.95) -> float:
    """The smallest difference between two configs' means over `n` seeds each that this noise resolves.

    Two-sided, unpaired (the conservative case): t(level, df) * sd * sqrt(2 / n).
    """
    return float(stats.t.ppf(0.5 + level / 2, df)) * sd * math.sqrt(2.0 / n)
