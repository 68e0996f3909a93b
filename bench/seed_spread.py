"""How much a trial's val PSNR owes to its training seed (issue 3: what a "best PSNR" comparison can resolve).

A trial trains once, with the spec's seed. This retrains a finished trial's exact config (its `config` user
attr) with other training seeds on the same data (the built-in synthetic set is drawn from config.seed, so
the data stays the seed-1 set while the weights, shuffling and noise draws change), and reports the PSNRs.
The spread is the noise floor of any one-run comparison between configs, or between two studies' bests.

    python bench/seed_spread.py sqlite:///hpo.db                 # the study's 4 best trials, seeds 1-4
    python bench/seed_spread.py sqlite:///hpo.db --trials 47 22 --seeds 1 2 3 4 5 6
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from model.config import TrainConfig, from_dict
from model.data import load_data
from model.errors import DivergedError
from model.train import train


def trial_config(trial: FrozenTrial) -> TrainConfig:
    return from_dict(json.loads(trial.user_attrs["config"]))


def seed_psnrs(config: TrainConfig, seeds: Sequence[int]) -> list[float]:
    """Final val PSNR of `config` trained with each training seed on the data of `config.seed`; NaN if it
    diverged. The config's own seed is not retrained: training is deterministic, so it would repeat."""
    data = load_data(config)
    out = []
    for seed in seeds:
        try:
            out.append(float(train(config.replace(seed=seed), data).val_psnr))
        except DivergedError:
            out.append(math.nan)
    return out


def summary(values: Sequence[float]) -> str:
    """'mean ± sd (min-max)' over the finite values, with how many diverged."""
    ok = [v for v in values if math.isfinite(v)]
    if not ok:
        return "all diverged"
    sd = statistics.stdev(ok) if len(ok) > 1 else 0.0
    text = f"{statistics.mean(ok):.2f} ± {sd:.2f} ({min(ok):.2f}-{max(ok):.2f})"
    return text + (f", {len(values) - len(ok)} diverged" if len(ok) < len(values) else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("storage", help="storage URL of a finished study")
    ap.add_argument("--study", default="vp-bo")
    ap.add_argument("--trials", type=int, nargs="+", help="trial numbers (default: the 4 best)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if args.trials:
        chosen = [study.trials[n] for n in args.trials]
    else:
        chosen = sorted(complete, key=lambda t: -float(t.value or -math.inf))[:4]
    print("| trial | its PSNR (seed of the study) | PSNR per training seed | mean ± sd (range) |")
    print("|---|---|---|---|")
    for t in chosen:
        config = trial_config(t)
        values = [float(t.value) if s == config.seed and t.value is not None else math.nan for s in args.seeds]
        others = [s for s in args.seeds if s != config.seed or t.value is None]
        for s, v in zip(others, seed_psnrs(config, others), strict=True):
            values[args.seeds.index(s)] = v
        per_seed = ", ".join(f"{s}: {v:.2f}" for s, v in zip(args.seeds, values, strict=True))
        print(f"| {t.number} | {t.value:.2f} dB | {per_seed} | {summary(values)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
