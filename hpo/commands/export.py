"""`hpo export --study NAME -o FILE.toml`: the best trial's complete TrainConfig, loadable by `hpo train`."""

from __future__ import annotations

import argparse

from hpo import results
from hpo.artifacts import attach_to_study
from hpo.commands.common import add_storage, add_study, load_study
from hpo.storage import mask_url, resolve_url
from hpo.trial_checkpoints import export_weights, trial_weights


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common], help="write the best config as a complete TrainConfig TOML")
    add_study(p)
    add_storage(p)
    p.add_argument("-o", "--output", required=True, help="TOML file to write")
    p.add_argument("--raw", action="store_true", help="the best single draw, not the confirmed winner")
    p.add_argument(
        "--weights",
        metavar="PATH",
        help="also copy the trial's kept final weights there (for `hpo predict --checkpoint`)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = resolve_url(args.storage)
    study = load_study(args)
    if args.weights:  # before anything is written: the exported trial must have kept its weights
        best = results.raw_best(study) if args.raw else results.answer(study).trial
        if best is not None:
            trial_weights(study, url, best.number)
    ans = results.write_export(study, mask_url(url), args.output, raw=args.raw)
    attach_to_study(url, study, args.output, "application/toml")  # the dashboard shows it with the study
    trial, value = (ans.raw, ans.raw.value) if args.raw else (ans.trial, ans.value)
    print(
        f"wrote {args.output}: trial {trial.number} of {study.study_name}, val PSNR {value:.4f} dB; "
        f"train it with `hpo train {args.output}` or `hpo retrain {args.output}`"
    )
    print(ans.note() if not args.raw else "the raw single-draw best (--raw), not confirmed over seeds")
    if args.weights:
        print(f"wrote {export_weights(study, url, trial.number, args.weights)}: trial {trial.number}'s final weights")
    return 0
