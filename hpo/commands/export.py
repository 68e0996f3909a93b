"""`hpo export --study NAME -o FILE.toml`: the best trial's complete TrainConfig, loadable by `hpo train`."""

from __future__ import annotations

import argparse

from hpo import results
from hpo.artifacts import attach_to_study
from hpo.errors import StudyError
from hpo.storage import mask_url, open_storage, resolve_url
from model.checkpoint import atomic_write_text


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common], help="write the best config as a complete TrainConfig TOML")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="storage URL (default: $HPO_STORAGE, else sqlite:///hpo.db)")
    p.add_argument("-o", "--output", required=True, help="TOML file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = resolve_url(args.storage)
    study = results.load(open_storage(url), args.study)
    text = results.export_toml(study, mask_url(url))
    try:
        atomic_write_text(args.output, text)
    except OSError as exc:
        raise StudyError(f"cannot write {args.output!r} ({exc.strerror}): choose a writable path with -o") from None
    attach_to_study(url, study, args.output, "application/toml")  # the dashboard shows it with the study (DESIGN §8)
    trial = results.best_trial(study)
    print(
        f"wrote {args.output}: trial {trial.number} of {study.study_name}, val PSNR {trial.value:.4f} dB; "
        f"train it with `hpo train {args.output}` or `hpo retrain {args.output}`"
    )
    return 0
