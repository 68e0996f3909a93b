"""`hpo retrain FILE.toml [--epochs N] [--seeds K] [--out DIR] [--resume] [--set F=V ...]`: the final model."""

from __future__ import annotations

import argparse

from hpo.commands.common import add_command, add_sets
from hpo.progress import RunBars
from model.retrain import DEFAULT_OUT, retrain, retrain_config

HELP = "train an exported config to the final model (checkpoints, plots, GIF, submission)"
DESCRIPTION = (
    "Train a TrainConfig TOML (e.g. from `hpo export`), optionally longer and with several seeds. "
    "Writes last.pt, best.pt, best-eNNNN.pt (the keep_best best epochs), metrics.json, psnr_per_frame.png, "
    "val.gif and, when the data has a test split, submission.csv and test-<id>.gif into --out."
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "retrain", HELP, DESCRIPTION)
    p.add_argument("config", help="TrainConfig TOML file (e.g. one written by `hpo export`)")
    p.add_argument("--epochs", type=int, help="epochs of the main stage (default: the file's)")
    p.add_argument("--seeds", type=int, default=1, help="runs with seeds seed, seed+1, ... in OUT/seed-N (default 1)")
    p.add_argument("--out", help=f"output folder (default: the file's `out`, else {DEFAULT_OUT})")
    p.add_argument("--resume", action="store_true", help="continue the run(s) in --out from last.pt after a crash")
    add_sets(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = retrain_config(args.config, args.sets, args.epochs, args.out)
    bars = RunBars(args.quiet)
    try:
        report = retrain(config, args.seeds, args.resume, lambda c, done: bars(f"seed {c.seed}", c, done))
    finally:
        bars.close()
    for r in report.runs:
        print(r.line())
    if report.seeds_json is not None:
        n = len(report.runs)
        print(f"val PSNR over {n} seeds: {report.mean:.2f} ± {report.std:.2f} dB (mean ± std); {report.seeds_json}")
    else:
        r = report.runs[0]
        print(f"val PSNR {r.final_val_psnr:.2f} dB (best {r.best_val_psnr:.2f}); checkpoints {r.out}/best.pt, last.pt")
    return 0
