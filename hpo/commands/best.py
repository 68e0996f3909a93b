"""`hpo best --study NAME [--json]`: the best trial's value, params and config."""

from __future__ import annotations

import argparse
import json

from hpo import results
from hpo.commands.common import add_storage, add_study, load_study


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("best", parents=[common], help="show the best trial of a study")
    add_study(p)
    add_storage(p)
    p.add_argument("--json", action="store_true", help="print JSON (value, params, complete config)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    best = results.best_dict(load_study(args))
    if args.json:
        print(json.dumps(best, indent=1, sort_keys=True))
        return 0
    iv = best["interval95"]
    spread = f" (95% interval {iv[0]:.2f} .. {iv[1]:.2f}, {len(best['seeds'])} seeds)" if iv else ""
    print(f"study {best['study']}: best trial {best['trial']}, val PSNR {best['value']:.4f} dB{spread}")
    print(best["note"])
    for k, v in best["params"].items():
        print(f"  {k} = {v}")
    return 0
