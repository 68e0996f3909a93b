"""`hpo top --study NAME [-k K] [--seeds S]`: confirm the best K configs over S seeds and rank them by the mean."""

from __future__ import annotations

import argparse

from hpo.commands.common import add_command, add_sets, add_storage, add_study, load_study
from hpo.storage import resolve_url
from hpo.top import format_table, top
from model.config import parse_sets

HELP = "confirm the best K configs over S training seeds and rank them by the mean"
DESCRIPTION = (
    "Retrain the configs of the K best distinct COMPLETE trials with seeds seed+1 .. seed+S as "
    "the study's confirmation (the companion study <study>.confirm, shared with other workers and kept: "
    "`hpo best` then gives the winner), and print them ranked by mean val PSNR. A study that has a "
    "confirmation already shows (or finishes) that one."
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "top", HELP, DESCRIPTION)
    add_study(p)
    add_storage(p)
    p.add_argument("-k", type=int, default=5, help="how many of the best configs (default 5)")
    p.add_argument("--seeds", type=int, default=3, help="runs per config (default 3)")
    add_sets(p, help="run setting of this process's runs (device, data, cache_dir, ...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    study = load_study(args)
    outcome = top(study, resolve_url(args.storage), args.k, args.seeds, parse_sets(args.sets), args.quiet)
    print(f"study {study.study_name}: best {len(outcome.candidates)} configs, ranked by mean val PSNR (dB)")
    print(format_table(outcome))
    return 0
