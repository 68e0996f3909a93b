"""`hpo top --study NAME [-k K] [--seeds S] [--epochs N]`: re-evaluate the best K trials with S seeds each."""

from __future__ import annotations

import argparse
import sys

from hpo.commands.common import add_sets, add_storage, add_study, load_study
from hpo.progress import RunBars
from hpo.top import format_table, reevaluate
from model.config import TrainConfig, parse_sets
from model.train import EpochHook


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "top",
        parents=[common],
        help="re-evaluate the best K complete trials with several seeds and rank them by the mean",
        description="Retrain the configs of the K best COMPLETE trials with seeds seed, seed+1, ... (nothing is "
        "written to disk) and print them ranked by mean val PSNR, with the spread and the original value.",
    )
    add_study(p)
    add_storage(p)
    p.add_argument("-k", type=int, default=5, help="how many of the best trials (default 5)")
    p.add_argument("--seeds", type=int, default=3, help="runs per trial (default 3)")
    p.add_argument("--epochs", type=int, help="main-stage epochs of every rerun (default: each trial's)")
    add_sets(p, help="override a field of every run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = parse_sets(args.sets)
    study = load_study(args)
    bars = RunBars(args.quiet, lines=False)

    def hook(trial: int, config: TrainConfig) -> EpochHook:
        return bars(f"trial {trial} seed {config.seed}", config)

    def said(trial: int, seed: int, value: float) -> None:
        bars.close()
        if not args.quiet:
            print(f"trial {trial} seed {seed}: val PSNR {value:.3f} dB", file=sys.stderr)

    try:
        rows = reevaluate(study, args.k, args.seeds, args.epochs, overrides, hook_factory=hook, on_run=said)
    finally:
        bars.close()
    print(f"study {study.study_name}: best {len(rows)} trials, {args.seeds} seeds each, ranked by mean val PSNR (dB)")
    print(format_table(rows))
    return 0
