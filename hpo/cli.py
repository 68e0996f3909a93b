"""The `hpo` command line: parse, call one library function, map errors to exit codes.

Each command lives in `hpo/commands/<name>.py` with `register(subparsers, common)` that adds its parser and
sets `func(args) -> int`; options several commands share are declared once in `hpo/commands/common.py`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

import optuna

from hpo.commands import best, dashboard, data, export, predict, report, retrain, run, status, top, train
from model.errors import UsageError

# The order `hpo --help` lists them.
COMMANDS = (run, status, best, export, report, dashboard, top, retrain, predict, train, data)

EXIT_USAGE = 2


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors and the final result")
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return common


class _Parser(argparse.ArgumentParser):
    # argparse's own errors are usage errors too: one line, exit 2 (not a usage dump).
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The full parser; tests use it to validate commands (e.g. docker-compose's)."""
    parser = _Parser(prog="hpo", description="Hyperparameter studies for the CVAE video-prediction model.")
    common = _common()
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub, common)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING
    if getattr(args, "verbose", 0):
        level = logging.DEBUG if args.verbose > 1 else logging.INFO
    if getattr(args, "quiet", False):
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    optuna.logging.set_verbosity(max(level, logging.WARNING))  # Optuna's INFO lines would repeat ours


def main(argv: list[str] | None = None) -> int:
    """Entry point of `hpo` and `python -m hpo`; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        _configure_logging(args)
        return int(args.func(args) or 0)
    except UsageError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
