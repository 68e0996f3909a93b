"""`hpo run --study NAME [--n-trials N] ...`: run trials of a study from its shared budget."""

from __future__ import annotations

import argparse
import sys

from hpo.commands.common import add_command, add_sets, add_storage
from hpo.pruners import PRUNERS
from hpo.run import RunOptions, run_study
from hpo.samplers import SAMPLERS
from hpo.signals import WorkerInterrupted

HELP = "run a Bayesian-optimisation study (joins it if it exists)"
DESCRIPTION = (
    "Run trials until the study holds N COMPLETE+PRUNED trials in total (shared by "
    "all workers on the same storage). Without --data, the spec's small profile on the built-in "
    "synthetic set is used."
)

THREADS_HELP = (
    "torch threads of this worker (default: $HPO_TORCH_THREADS, else this machine's cores split between the hpo "
    "workers running on it; 0 = torch's own default, no split)"
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "run", HELP, DESCRIPTION)
    p.add_argument("--study", required=True, help="spec name in studies/ (e.g. vp-bo) or a path to a spec .toml")
    p.add_argument("--n-trials", type=int, default=50, help="the study's global budget of finished trials")
    add_storage(p)
    p.add_argument("--sampler", help=f"{' | '.join(SAMPLERS)} (default: the spec's)")
    p.add_argument("--pruner", help=f"{' | '.join(PRUNERS)} (default: the spec's)")
    p.add_argument("--data", help="data set root in the lab layout (default: built-in synthetic set)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, help="study seed (default: the spec's)")
    p.add_argument("--timeout", type=float, help="stop this worker after SEC seconds (between trials)")
    p.add_argument("--profile", help="spec profile to apply (default: small without --data, none with it)")
    p.add_argument("--study-name", help="store the study under this name instead of the spec's")
    p.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    add_sets(p, help="override a fixed TrainConfig field of every trial (repeatable)")
    confirm = p.add_argument_group("confirmation (after the search, retrain the best configs over seeds)")
    confirm.add_argument("--confirm-top", type=int, metavar="K", help="candidates to confirm (default: spec's)")
    confirm.add_argument("--confirm-seeds", type=int, metavar="S", help="most seeds per candidate (default: spec's)")
    confirm.add_argument(
        "--confirm-estimate", type=int, metavar="E", help="fresh seeds for the winner's value (default: spec's)"
    )
    confirm.add_argument("--no-confirm", action="store_true", help="stop after the search, confirm nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        summary = run_study(RunOptions.from_args(args))
    except WorkerInterrupted as exc:
        print(f"interrupted: the running trial was marked FAIL (interrupted) and re-queued; exit {exc.exit_code}")
        return exc.exit_code
    failure = summary.worker.failure() or (summary.confirm_worker and summary.confirm_worker.failure())
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0
