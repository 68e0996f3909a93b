"""`hpo top --study NAME [-k K] [--seeds S] [--epochs N]`: re-evaluate the best K trials with S seeds each."""

from __future__ import annotations

import argparse
import sys

from hpo import results
from hpo.commands.retrain import RunBars
from hpo.storage import open_storage, resolve_url
from hpo.top import format_table, reevaluate
from model.config import parse_sets


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "top",
        parents=[common],
        help="re-evaluate the best K complete trials with several seeds and rank them by the mean",
        description="Retrain the configs of the K best COMPLETE trials with seeds seed, seed+1, ... (nothing is "
        "written to disk) and print them ranked by mean val PSNR, with the spread and the original value.",
    )
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="storage URL (default: $HPO_STORAGE, else sqlite:///hpo.db)")
    p.add_argument("-k", type=int, default=5, help="how many of the best trials (default 5)")
    p.add_argument("--seeds", type=int, default=3, help="runs per trial (default 3)")
    p.add_argument("--epochs", type=int, help="main-stage epochs of every rerun (default: each trial's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field of every run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = parse_sets(args.set)
    study = results.load(open_storage(resolve_url(args.storage)), args.study)
    bars = RunBars(args.quiet, lines=False)

    def said(trial: int, seed: int, value: float) -> None:
        bars.close()
        if not args.quiet:
            print(f"trial {trial} seed {seed}: val PSNR {value:.3f} dB", file=sys.stderr)

    try:
        rows = reevaluate(
            study,
            args.k,
            args.seeds,
            args.epochs,
            overrides,
            hook_factory=lambda trial, config: bars(f"trial {trial} seed {config.seed}", config),
            on_run=said,
        )
    finally:
        bars.close()
    print(f"study {study.study_name}: best {len(rows)} trials, {args.seeds} seeds each, ranked by mean val PSNR (dB)")
    print(format_table(rows))
    return 0
