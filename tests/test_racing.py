"""Racing decisions on fixed numbers: the paired test drops what is clearly behind, and nothing else."""

from __future__ import annotations

import math

import pytest

from hpo.racing import interval, leader, pooled_sd, race, resolvable_difference


def test_a_candidate_behind_on_every_seed_is_dropped_even_with_large_seed_noise() -> None:
    # The seeds move both candidates by several dB (common random numbers); the difference is a steady -0.5 dB.
    leader_values = [30.0, 27.0, 31.5, 28.0]
    behind = [v - 0.5 + d for v, d in zip(leader_values, [0.02, -0.03, 0.01, 0.0], strict=True)]
    assert race({0: leader_values, 1: behind}, alpha=0.1, min_seeds=2) == {1}


def test_unpaired_spread_alone_does_not_drop_a_candidate_whose_difference_is_noise() -> None:
    a = [30.0, 27.0, 31.5, 28.0]
    b = [29.0, 28.5, 30.5, 28.6]  # differences -1.0, +1.5, -1.0, +0.6: mean -0.0, no evidence
    assert race({0: a, 1: b}, alpha=0.1, min_seeds=2) == set()


def test_no_drop_before_min_seeds_and_none_without_racing() -> None:
    values = {0: [30.0, 30.1, 30.2], 1: [20.0, 20.1, 20.2]}
    assert race({c: v[:2] for c, v in values.items()}, alpha=0.1, min_seeds=3) == set()
    assert race(values, alpha=0.1, min_seeds=3) == {1}
    assert race(values, alpha=0.0, min_seeds=2) == set()  # alpha 0: every candidate gets every seed


def test_a_diverged_run_drops_its_candidate_and_a_lone_candidate_is_never_dropped() -> None:
    assert race({0: [30.0, 29.0], 1: [31.0, None], 2: [29.5, 28.8]}, alpha=0.1, min_seeds=2) == {1}
    assert race({0: [30.0, 29.0]}, alpha=0.1, min_seeds=2) == set()


def test_the_level_matters_a_borderline_gap_survives_a_strict_alpha() -> None:
    a = [30.0, 29.0, 31.0]
    b = [29.6, 29.1, 30.5]  # differences -0.4, +0.1, -0.5
    assert race({0: a, 1: b}, alpha=0.25, min_seeds=2) == {1}
    assert race({0: a, 1: b}, alpha=0.05, min_seeds=2) == set()


def test_leader_is_the_highest_mean_and_ties_go_to_the_better_search_value() -> None:
    assert leader({0: [29.0, 29.0], 1: [30.0, 28.4], 2: [29.5, 29.0]}) == 2
    assert leader({0: [29.0], 1: [29.0]}) == 0


def test_interval_is_the_t_interval_and_a_failed_seed_is_minus_infinity() -> None:
    iv = interval([28.0, 30.0, 29.0, 31.0])
    assert iv.mean == pytest.approx(29.5)
    # t(0.975, 3) = 3.182, sd = 1.291, sqrt(4) = 2
    assert iv.half == pytest.approx(3.1824 * 1.2910 / 2, rel=1e-3)
    assert iv.low is not None and iv.low < 29.5 < (iv.high or 0)
    assert interval([30.0]).half is None
    assert interval([30.0, None]).mean == -math.inf


def test_pooled_sd_weights_by_degrees_of_freedom_and_resolvable_difference_shrinks_with_seeds() -> None:
    sd, df = pooled_sd([[1.0, 3.0], [10.0, 12.0, 14.0], [5.0]]) or (0.0, 0)
    # variances 2 (df 1) and 4 (df 2): pooled (2 + 8) / 3
    assert df == 3 and sd == pytest.approx(math.sqrt(10 / 3))
    assert pooled_sd([[1.0], [2.0]]) is None
    assert resolvable_difference(1.0, 10, 4) > resolvable_difference(1.0, 10, 16)
    assert resolvable_difference(1.0, 10, 4) == pytest.approx(2.2281 * math.sqrt(0.5), rel=1e-3)
