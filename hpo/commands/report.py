"""`hpo report --study NAME [--storage URL] -o FILE.html`: one self-contained HTML page about a study."""

from __future__ import annotations

import argparse
import sys

from hpo import results
from hpo.commands.common import add_command, add_storage, add_study, load_study
from hpo.outputs import to_stdout
from hpo.report import write_report
from hpo.storage import mask_url, resolve_url
from model.words import plural

HELP = "write a self-contained HTML report of a study (plots, best config, warnings)"
DESCRIPTION = (
    "Optimization history, parameter importances, parallel coordinates, slice plots, learning "
    "curves, the best config's schedules and PSNR per frame, trial states and warnings, in one HTML file that "
    "opens offline."
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "report", HELP, DESCRIPTION)
    add_study(p)
    add_storage(p)
    p.add_argument("-o", "--output", required=True, help="HTML file to write (- for standard output)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    study = load_study(args, heartbeat=False)
    write_report(study, mask_url(resolve_url(args.storage)), args.output)
    st = results.status(study)
    best = f"best {st.best_value:.4f} dB (trial {st.best_number})" if st.best_value is not None else "no finished trial"
    stdout = to_stdout(args.output)  # the page went to standard output: the summary goes beside it, to stderr
    where = "standard output" if stdout else args.output
    trials = plural(sum(st.counts.values()), "trial")
    print(f"wrote {where}: study {study.study_name}, {trials}, {best}", file=sys.stderr if stdout else sys.stdout)
    return 0
