"""Teacher-forcing ratio and KL beta per epoch (docs/ARCHITECTURE.md, "Schedules"): pure functions of (config, t).

t is the 0-based epoch and T = config.epochs, the length of the main stage.
"""

from __future__ import annotations

import math

from model.config import TrainConfig


def teacher_forcing_ratio(config: TrainConfig, t: int) -> float:
    """tfr(t) = max(0, tfr - tfr_d_step * max(0, t - tfr_sde)): probability of teacher forcing in epoch t."""
    return max(0.0, config.tfr - config.tfr_d_step * max(0, t - config.tfr_sde))


def kl_beta(config: TrainConfig, t: int) -> float:
    """KL weight beta in epoch t for the Cyclical, Monotonic or None annealing schedule.

    Cyclical: tau = (t mod ceil(T/M)) / (T/M); beta = tau / R if tau <= R else 1.
    Monotonic: beta = min(1, t * M / (R * T)). None: beta = 1.
    M >= T makes every period one epoch, so Cyclical beta is 0 throughout. The report's code took the floor
    floor(T/M), which makes the period one epoch, and beta 0 throughout, already for M > T/2: runs of that code
    with cycle 75 over 100 epochs had beta 0, where the report's formula (the ceiling, used here) alternates 0 and
    0.75 (docs/ARCHITECTURE.md, "Schedules").
    """
    big_t, m, r = config.epochs, config.kl_anneal_cycle, config.kl_anneal_ratio
    if config.kl_anneal_type == "Cyclical":
        period = big_t / m
        tau = (t % math.ceil(period)) / period
        return tau / r if tau <= r else 1.0
    if config.kl_anneal_type == "Monotonic":
        return min(1.0, t * m / (r * big_t))
    return 1.0


def schedule_table(config: TrainConfig) -> list[tuple[int, float, float]]:
    """(epoch, tfr, beta) for every epoch of the main stage: what the report plots."""
    return [(t, teacher_forcing_ratio(config, t), kl_beta(config, t)) for t in range(config.epochs)]
