"""`hpo export --study NAME -o FILE.toml`: the best trial's complete TrainConfig, loadable by `hpo train`."""

from __future__ import annotations

import argparse

from hpo import results
from hpo.artifacts import attach_to_study
from hpo.commands.common import add_storage, add_study, load_study
from hpo.storage import mask_url, resolve_url


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common], help="write the best config as a complete TrainConfig TOML")
    add_study(p)
    add_storage(p)
    p.add_argument("-o", "--output", required=True, help="TOML file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = resolve_url(args.storage)
    study = load_study(args)
    results.write_export(study, mask_url(url), args.output)
    attach_to_study(url, study, args.output, "application/toml")  # the dashboard shows it with the study
    trial = results.best_trial(study)
    print(
        f"wrote {args.output}: trial {trial.number} of {study.study_name}, val PSNR {trial.value:.4f} dB; "
        f"train it with `hpo train {args.output}` or `hpo retrain {args.output}`"
    )
    return 0
