"""Replay pruners over the learning curves of a study run without pruning (issue 3: pruning's worth).

A study run with `--pruner none` holds every trial's full curve (val PSNR per epoch). Each pruner here is
Optuna's own, fed those curves trial by trial in their original order on an in-memory study: the epochs it
would have spent, the best final PSNR among the trials it would have let finish, and where it would have
stopped the best trial. The sampler's later proposals would differ with pruning on (it sees pruned trials),
so this measures the pruners on fixed curves, not whole studies; `bench_study.py pruning` runs those.
It also prints how well the PSNR after each epoch ranks the trials by final PSNR (Spearman's rho), and the
best of a random k of the complete trials: what a study that finishes only k trials would reach from the draws
alone (the winner's curse that a pruned study's raw best starts behind by). With `--spent N` it also prints
the study's best at the cost of a pruned one: over its first trials that together trained at most N epochs.
A single seeded worker proposes the same trials whatever `--n-trials` is, so a short run gives that prefix.

    hpo run --study vp-bo --n-trials 20 --pruner none --seed 0      # in an empty folder: ./hpo.db
    python bench/replay_pruning.py sqlite:///hpo.db [--study vp-bo] [--spent 103]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.pruners import make_pruner


def _rungs(first: int, second: int) -> dict[str, list[int]]:
    return {"at_epochs": [1, 2], "reduction_factors": [first, second]}


PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    "hyperband rf 3 (the spec's)": lambda e: optuna.pruners.HyperbandPruner(1, e, 3),
    "hyperband rf 4": lambda e: optuna.pruners.HyperbandPruner(1, e, 4),
    "hyperband rf 5": lambda e: optuna.pruners.HyperbandPruner(1, e, 5),
    "hyperband rf 6 (the small profile's until 2026-12-05)": lambda e: optuna.pruners.HyperbandPruner(1, e, 6),
    "hyperband rf 8": lambda e: optuna.pruners.HyperbandPruner(1, e, 8),
    "successive halving rf 3": lambda e: optuna.pruners.SuccessiveHalvingPruner(1, 3),
    "rungs after epochs 1 and 2, rf 2 and 6": lambda e: make_pruner("rungs", e, _rungs(2, 6)),
    "rungs after epochs 1 and 2, rf 2 and 16 (the small profile's)": lambda e: make_pruner("rungs", e, _rungs(2, 16)),
    "rungs after epochs 1 and 2, rf 3 and 6": lambda e: make_pruner("rungs", e, _rungs(3, 6)),
    "median (5 startup, no warm-up)": lambda e: optuna.pruners.MedianPruner(5, 0),
    "median (5 startup, 1 warm-up epoch)": lambda e: optuna.pruners.MedianPruner(5, 1),
}


def replay(curves: list[FrozenTrial], pruner: optuna.pruners.BasePruner) -> tuple[int, float, int | None]:
    """(epochs spent, best final value among unpruned trials, epoch at which the best trial is stopped)."""
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name="replay")
    best_number = max(curves, key=lambda t: t.value or -np.inf).number
    spent, best, best_stopped = 0, -np.inf, None
    for t in curves:
        trial = study.ask()
        for step, value in sorted(t.intermediate_values.items()):
            trial.report(value, step)
            spent += 1
            if step < max(t.intermediate_values) and trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                best_stopped = step if t.number == best_number else best_stopped
                break
        else:
            study.tell(trial, t.value)
            best = max(best, float(t.value or -np.inf))
    return spent, best, best_stopped


DRAWS = 20_000  # random k-subsets per k in best_of_draws


def best_of_draws(finals: list[float], k: int, draws: int = DRAWS, seed: int = 0) -> float:
    """Mean, over `draws` random k-subsets of the final values (without replacement), of each subset's best."""
    values = np.asarray(finals)
    picks = np.random.default_rng(seed).random((draws, len(values))).argsort(axis=1)[:, :k]
    return float(values[picks].max(axis=1).mean())


def best_within(trials: list[FrozenTrial], epochs: int) -> tuple[float, int]:
    """(best final value, trial count) over the first trials, in number order, that together trained at most
    `epochs` epochs (reported values; a failed trial's count too). NaN when none of them completed."""
    spent, best, count = 0, np.nan, 0
    for t in trials:  # in number order, as Study.get_trials returns them
        spent += len(t.intermediate_values)
        if spent > epochs:
            break
        count += 1
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = float(np.fmax(best, t.value))
    return best, count


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("storage", help="storage URL of a study run with --pruner none")
    ap.add_argument("--study", default="vp-bo")
    ap.add_argument("--spent", type=int, help="a pruned study's epochs: print this study's best within as many")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = optuna.load_study(study_name=args.study, storage=args.storage)
    trials = source.get_trials(deepcopy=False)  # read once: the curves below and best_within
    curves = [t for t in trials if t.state == TrialState.COMPLETE and t.intermediate_values]
    if not curves:
        raise SystemExit(f"study {args.study!r} has no complete trial with a learning curve: run it first")
    epochs = max(len(t.intermediate_values) for t in curves)
    full = sum(len(t.intermediate_values) for t in curves)
    best = max(float(t.value or -np.inf) for t in curves)
    print(f"{args.study}: {len(curves)} complete trials of {epochs} epochs, best {best:.2f} dB without pruning\n")
    finals = [float(t.value or 0.0) for t in curves]
    for step in range(1, epochs):
        early = [float(t.intermediate_values.get(step, np.nan)) for t in curves]
        print(f"Spearman rho, PSNR after epoch {step} vs final: {spearman(early, finals):+.2f}")
    sizes = [k for k in (5, 9, 10, 12, 20) if k < len(finals)]
    draws = ", ".join(f"{k}: {best_of_draws(finals, k):.2f}" for k in sizes)
    print(f"\nBest of a random k of the {len(finals)} trials (mean of {DRAWS:,} draws), k: {draws} dB")
    if args.spent is not None:
        within, count = best_within(trials, args.spent)
        print(f"Best within the first {args.spent} epochs (its first {count} trials): {within:.2f} dB")
    print("\n| pruner | epochs spent | share | best final PSNR | best trial stopped at epoch |")
    print("|---|---|---|---|---|")
    for name, make in PRUNERS.items():
        spent, kept, stopped = replay(curves, make(epochs))
        print(f"| {name} | {spent} of {full} | {spent / full:.2f} | {kept:.2f} dB | {stopped or 'not stopped'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
