"""`hpo best --study NAME [-f json|table|yaml]`: the best trial's value, params and config."""

from __future__ import annotations

import argparse
from typing import Any

from hpo import results
from hpo.commands.common import add_format, add_storage, add_study, load_study, render


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("best", parents=[common], help="show the best trial of a study")
    add_study(p)
    add_storage(p)
    add_format(p)
    p.add_argument(
        "--json", dest="format", action="store_const", const="json", help="same as -f json (value, params, config)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    best = results.best_dict(load_study(args))
    if args.format:
        print(render(best, args.format, _rows(best)))
        return 0
    iv = best["interval95"]
    spread = f" (95% interval {iv[0]:.2f} .. {iv[1]:.2f}, {len(best['seeds'])} seeds)" if iv else ""
    print(f"study {best['study']}: best trial {best['trial']}, val PSNR {best['value']:.4f} dB{spread}")
    print(best["note"])
    for k, v in best["params"].items():
        print(f"  {k} = {v}")
    return 0


def _rows(best: dict[str, Any]) -> list[dict[str, Any]]:
    """`-f table`: one row per field, params and config flattened as `params.NAME` and `config.NAME`."""
    rows = []
    for key, value in best.items():
        if isinstance(value, dict) and key in ("params", "config"):
            rows += [{"field": f"{key}.{k}", "value": v} for k, v in value.items()]
        else:
            rows.append({"field": key, "value": value})
    return rows
