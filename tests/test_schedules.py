"""Schedules against hand-computed values (docs/ARCHITECTURE.md, "Schedules")."""

import pytest

from model.config import TrainConfig
from model.schedules import kl_beta, schedule_table, teacher_forcing_ratio


def cfg(**kw):
    return TrainConfig(**kw).validate()


@pytest.mark.parametrize(
    ("t", "expected"),
    [(0, 1.0), (10, 1.0), (11, 0.9), (15, 0.5), (19, 0.1), (20, 0.0), (35, 0.0)],
)
def test_tfr_decays_linearly_after_sde_and_floors_at_zero(t, expected):
    c = cfg(tfr=1.0, tfr_sde=10, tfr_d_step=0.1)
    assert teacher_forcing_ratio(c, t) == pytest.approx(expected)


def test_tfr_without_decay_is_constant():
    c = cfg(tfr=0.8, tfr_sde=0, tfr_d_step=0.0)
    assert {teacher_forcing_ratio(c, t) for t in range(50)} == {0.8}


@pytest.mark.parametrize(
    ("t", "expected"),
    # T=100, M=10: period 10 epochs; R=1 -> beta = (t mod 10) / 10
    [(0, 0.0), (1, 0.1), (5, 0.5), (9, 0.9), (10, 0.0), (23, 0.3)],
)
def test_cyclical_ratio_one(t, expected):
    c = cfg(epochs=100, kl_anneal_type="Cyclical", kl_anneal_cycle=10, kl_anneal_ratio=1.0)
    assert kl_beta(c, t) == pytest.approx(expected)


@pytest.mark.parametrize(("t", "expected"), [(0, 0.0), (2, 0.4), (5, 1.0), (6, 1.0), (9, 1.0), (12, 0.4)])
def test_cyclical_ratio_half_saturates(t, expected):
    # tau = (t mod 10)/10; R = 0.5: beta = tau/0.5 while tau <= 0.5, then 1
    c = cfg(epochs=100, kl_anneal_type="Cyclical", kl_anneal_cycle=10, kl_anneal_ratio=0.5)
    assert kl_beta(c, t) == pytest.approx(expected)


def test_cyclical_non_integer_period():
    # T=10, M=3: T/M = 3.333, ceil = 4 -> tau = (t mod 4) / 3.333
    c = cfg(epochs=10, kl_anneal_type="Cyclical", kl_anneal_cycle=3, kl_anneal_ratio=1.0)
    assert [round(kl_beta(c, t), 4) for t in range(6)] == [0.0, 0.3, 0.6, 0.9, 0.0, 0.3]


def test_cyclical_more_cycles_than_epochs_is_zero():
    # T/M < 1: every period is one epoch, tau = 0 -> beta 0 (the seed's cycle-75-over-100 trap ... and worse)
    c = cfg(epochs=5, kl_anneal_type="Cyclical", kl_anneal_cycle=20, kl_anneal_ratio=0.5)
    assert [kl_beta(c, t) for t in range(5)] == [0.0] * 5


def test_cyclical_uses_the_reports_ceiling_not_the_authors_floor():
    # T=100, M=75: T/M = 1.333. The author's floor gives a one-epoch period (beta 0 throughout); the report's
    # ceiling gives a period of 2 and tau = 0, 0.75, 0, 0.75, ... So beta is 0 throughout only for M >= T.
    c = cfg(epochs=100, kl_anneal_type="Cyclical", kl_anneal_cycle=75, kl_anneal_ratio=1.0)
    assert [kl_beta(c, t) for t in range(4)] == pytest.approx([0.0, 0.75, 0.0, 0.75])
    assert {kl_beta(c.replace(kl_anneal_cycle=100), t) for t in range(100)} == {0.0}


@pytest.mark.parametrize(("t", "expected"), [(0, 0.0), (5, 0.5), (10, 1.0), (50, 1.0)])
def test_monotonic(t, expected):
    c = cfg(epochs=100, kl_anneal_type="Monotonic", kl_anneal_cycle=10, kl_anneal_ratio=1.0)
    assert kl_beta(c, t) == pytest.approx(expected)


def test_monotonic_small_ratio_reaches_one_sooner():
    c = cfg(epochs=100, kl_anneal_type="Monotonic", kl_anneal_cycle=1, kl_anneal_ratio=0.25)
    assert kl_beta(c, 10) == pytest.approx(0.4) and kl_beta(c, 25) == 1.0


def test_none_is_one():
    c = cfg(kl_anneal_type="None")
    assert {kl_beta(c, t) for t in range(30)} == {1.0}


def test_schedule_table_covers_every_epoch():
    c = cfg(epochs=7)
    table = schedule_table(c)
    assert [row[0] for row in table] == list(range(7))
    assert table[3] == (3, teacher_forcing_ratio(c, 3), kl_beta(c, 3))
