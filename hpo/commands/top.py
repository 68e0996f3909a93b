"""`hpo top --study NAME [-k K] [--seeds S]`: confirm the best K configs over S seeds and rank them by the mean."""

from __future__ import annotations

import argparse
import math
from typing import Any

from hpo.commands.common import add_command, add_format, add_sets, add_storage, add_study, load_study, render
from hpo.confirm import Confirmation
from hpo.storage import resolve_url
from hpo.top import format_table, top
from model.config import parse_sets
from model.words import plural

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
    add_format(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    study = load_study(args)
    quiet = args.quiet or args.format is not None  # -f: standard output holds the data alone, no progress lines
    outcome = top(study, resolve_url(args.storage), args.k, args.seeds, parse_sets(args.sets), quiet)
    if args.format:
        rows = _records(outcome)
        data = {"study": study.study_name, "seeds": list(outcome.seeds_planned), "ranked": rows}
        print(render(data, args.format, rows))
        return 0
    print(f"study {study.study_name}: best {plural(len(outcome.candidates), 'config')}, ranked by mean val PSNR (dB)")
    print(format_table(outcome))
    return 0


def _records(outcome: Confirmation) -> list[dict[str, Any]]:
    """The candidates best mean first, as `format_table` ranks them, as plain data (what -f prints)."""
    ranked = sorted(outcome.candidates, key=lambda r: (-(r.interval.mean if r.interval else -math.inf), r.index))
    return [
        {
            "rank": rank,
            "trial": r.trial,
            "mean": r.interval.mean if r.interval else None,
            "search_value": r.search_value,
            "seeds": list(r.seeds),
            "values": list(r.values),
        }
        for rank, r in enumerate(ranked, 1)
    ]
