"""`hpo report --study NAME [--storage URL] -o FILE.html`: one self-contained HTML page about a study."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpo import results
from hpo.errors import StudyError
from hpo.report import write_report
from hpo.storage import mask_url, open_storage, resolve_url


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "report",
        parents=[common],
        help="write a self-contained HTML report of a study (plots, best config, warnings)",
        description="Optimization history, parameter importances, parallel coordinates, slice plots, learning "
        "curves, the best config's schedules and PSNR per frame, trial states and warnings, in one HTML file that "
        "opens offline.",
    )
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="storage URL (default: $HPO_STORAGE, else sqlite:///hpo.db)")
    p.add_argument("-o", "--output", required=True, help="HTML file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = resolve_url(args.storage)
    study = results.load(open_storage(url, heartbeat=False), args.study)
    try:
        write_report(study, mask_url(url), args.output)
    except OSError as exc:
        raise StudyError(
            f"cannot write {args.output!r} ({_why(Path(args.output), exc)}): choose a writable file with -o"
        ) from None
    st = results.status(study)
    best = f"best {st.best_value:.4f} dB (trial {st.best_number})" if st.best_value is not None else "no finished trial"
    print(f"wrote {args.output}: study {study.study_name}, {sum(st.counts.values())} trials, {best}")
    return 0


def _why(path: Path, exc: OSError) -> str:
    """The reason a write failed, naming a parent that is a file (mkdir's own "File exists" misleads)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    return exc.strerror or str(exc)
