"""A real worker process on a cheap objective, for the multi-process tests of `hpo.worker`.

    python tests/workers/cheap_worker.py URL STUDY N_TRIALS --seed K [--epochs E] [--epoch-seconds S] [--go FILE]
        [--no-prune]

The study must exist. Prints one line per event on stdout ("start N", "end N STATE VALUE", "done ...") so a
test can time a kill; exits 0, 130/143 on SIGINT/SIGTERM (WorkerInterrupted), 2 on StorageError.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hpo.errors import StorageError
from hpo.signals import WorkerInterrupted
from hpo.storage import open_storage
from hpo.worker import run_worker

SPACE = {
    "x": FloatDistribution(-5.0, 5.0),
    "y": FloatDistribution(-5.0, 5.0),
    "kind": CategoricalDistribution(["a", "b", "c"]),
}
OFFSET = {"a": 0.0, "b": 0.5, "c": 1.0}


def say(line: str) -> None:
    print(line, flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("study")
    p.add_argument("n_trials", type=int)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--epoch-seconds", type=float, default=0.05)
    p.add_argument("--poll", type=float, default=0.2)
    p.add_argument("--no-prune", action="store_true", help="every trial runs all epochs (bench/bench_storage.py)")
    p.add_argument("--go", help="print 'ready', then start only once this file exists (a start line for all)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        y = trial.suggest_float("y", -5.0, 5.0)
        kind = trial.suggest_categorical("kind", ["a", "b", "c"])
        value = float("inf")
        for epoch in range(args.epochs):
            time.sleep(args.epoch_seconds)
            value = (x - 1.0) ** 2 + (y + 2.0) ** 2 + OFFSET[str(kind)] + 1.0 / (epoch + 1)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    try:
        storage = open_storage(args.url)
        sampler = optuna.samplers.TPESampler(seed=args.seed, constant_liar=True, n_startup_trials=4)
        pruner = (
            optuna.pruners.NopPruner()
            if args.no_prune
            else optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        )
        study = optuna.load_study(study_name=args.study, storage=storage, sampler=sampler, pruner=pruner)
        if args.go:
            say("ready")
            while not os.path.exists(args.go):
                time.sleep(0.002)
        result = run_worker(
            study,
            objective,
            args.n_trials,
            on_trial_start=lambda t: say(f"start {t.number}"),
            on_trial_end=lambda s, f: say(f"end {f.number} {f.state.name} {f.value}"),
            poll_interval=args.poll,
            distributions=SPACE,
        )
    except WorkerInterrupted as exc:
        say(f"interrupted {exc.exit_code}")
        return exc.exit_code
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    say(f"done {result.trials_run} {result.complete} {result.pruned} {result.failed} {result.stopped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
