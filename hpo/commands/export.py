"""`hpo export --study NAME -o FILE.toml`: the best trial's complete TrainConfig, loadable by `hpo train`."""

from __future__ import annotations

import argparse
import sys

from hpo import results
from hpo.artifacts import attach_to_study, export_filename
from hpo.commands.common import add_storage, add_study, load_study
from hpo.outputs import to_stdout
from hpo.storage import mask_url, resolve_url
from hpo.trial_checkpoints import export_weights, trial_weights


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common], help="write the best config as a complete TrainConfig TOML")
    add_study(p)
    add_storage(p)
    p.add_argument("-o", "--output", required=True, help="TOML file to write (- for standard output)")
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
    trial, value = (ans.raw, ans.raw.value) if args.raw else (ans.trial, ans.value)
    # The dashboard shows the exported config with the study: one artifact per (trial, content), so exporting
    # the same answer again adds nothing.
    text = results.export_toml(study, ans, mask_url(url), args.raw)
    attach_to_study(url, study, export_filename(trial.number, text), text, "application/toml")
    stdout = to_stdout(args.output)
    where, name = ("standard output", "FILE") if stdout else (args.output, args.output)
    lines = [
        f"wrote {where}: trial {trial.number} of {study.study_name}, val PSNR {value:.4f} dB; "
        f"train it with `hpo train {name}` or `hpo retrain {name}`",
        ans.note() if not args.raw else "the raw single-draw best (--raw), not confirmed over seeds",
    ]
    if args.weights:
        lines.append(
            f"wrote {export_weights(study, url, trial.number, args.weights)}: trial {trial.number}'s final weights"
        )
    for line in lines:  # beside the TOML on standard output they would break it: stderr then
        print(line, file=sys.stderr if stdout else sys.stdout)
    return 0
