"""`hpo top`: confirm a study's K best configs over S seeds with the confirmation machinery, then rank them.

A front end to `hpo.confirm` for a study run without confirmation (or to show one that ran): the runs are
trials of the study's companion `<study>.confirm`, shared with any other worker, kept in the storage, and the
answer `hpo best` and `hpo export` give afterwards. Unlike `hpo run`'s confirmation it races nothing by default
(`alpha` 0): every candidate gets every seed, and the table ranks them by their mean.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import optuna

from hpo import confirm
from hpo.errors import SpecError
from hpo.run import run_confirmation
from hpo.space import RUN_SETTINGS
from hpo.spec import ConfirmSettings, space_text

__all__ = ["format_table", "top"]


def top(
    study: optuna.Study, url: str, k: int, seeds: int, overrides: dict[str, Any], quiet: bool, alpha: float = 0.0
) -> confirm.Confirmation:
    """Run (or join, or read) the study's confirmation of its `k` best configs over `seeds` seeds.

    `overrides` are run settings (device, data, cache_dir, ...) for this process's runs.

    Raises:
        SpecError: -k or --seeds below 1, or an override of a hyperparameter (the confirmed config would not be
            the one the study reports).
    """
    # No estimate round: `hpo top` shows every candidate on the same seeds, and its note says the winner's mean
    # was picked on them.
    settings = ConfirmSettings(enabled=True, top_k=k, seeds=seeds, alpha=alpha, min_seeds=2, estimate=0)
    settings.check("-k/--seeds")
    searched = sorted(set(overrides) - RUN_SETTINGS)
    if searched:
        raise SpecError(
            f"--set {', '.join(searched)}: `hpo top` confirms the configs the study trained; only run settings "
            f"({', '.join(sorted(RUN_SETTINGS))}) may change"
        )
    space = space_text(study.user_attrs.get("space", ""))
    _, outcome = run_confirmation(study, url, settings, space, overrides, quiet=quiet)
    return outcome


def format_table(outcome: confirm.Confirmation) -> str:
    """rank, trial, mean and sd over seeds, the trial's search value, the per-seed values; best mean first."""
    rows = sorted(outcome.candidates, key=lambda r: (-(r.interval.mean if r.interval else -math.inf), r.index))
    lines = [
        f"{'rank':>4}  {'trial':>5}  {'mean':>8}  {'sd':>6}  {'search':>8}  values (seeds {outcome.seeds_planned})"
    ]
    for rank, r in enumerate(rows, 1):
        finite = [v for v in r.values if v is not None and math.isfinite(v)]
        mean = r.interval.mean if r.interval else math.nan
        sd = math.nan if len(finite) != len(r.values) else (statistics.stdev(finite) if len(finite) > 1 else 0.0)
        values = " ".join("nan" if v is None else f"{v:.2f}" for v in r.values)
        lines.append(f"{rank:>4}  {r.trial:>5}  {mean:>8.3f}  {sd:>6.3f}  {r.search_value:>8.3f}  {values}")
    return "\n".join(lines)
