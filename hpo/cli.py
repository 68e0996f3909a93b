"""The `hpo` command line: parse, call one library function, map errors to exit codes.

Each command lives in `hpo/commands/<name>.py` with `register(subparsers, common)` that adds its parser and
sets `func(args) -> int`; options several commands share are declared once in `hpo/commands/common.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings

import optuna

import hpo
from hpo.commands import best, dashboard, data, export, predict, report, retrain, run, status, top, train
from hpo.storage import ENV_STORAGES, mask_secrets
from model.errors import UsageError

# The order `hpo --help` lists them.
COMMANDS = (run, status, best, export, report, dashboard, top, retrain, predict, train, data)

EXIT_USAGE = 2


def _common(prefix: str = "") -> argparse.ArgumentParser:
    """-v, -q and --debug, which every command takes; `prefix` gives the dests of the copy before the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", dest=f"{prefix}verbose", action="count", default=0, help="more log output")
    common.add_argument(
        "-q", "--quiet", dest=f"{prefix}quiet", action="store_true", help="only errors and the final result"
    )
    common.add_argument("--debug", dest=f"{prefix}debug", action="store_true", help="show tracebacks of errors")
    return common


# The global flags are accepted before the command too (`hpo -v status`). They get their own dests: a
# subparser writes its defaults over what the main parser parsed, so a shared dest would lose `hpo -v status`'s -v.
_BEFORE = "before_"


def _merge_global_flags(args: argparse.Namespace) -> None:
    args.verbose = getattr(args, "verbose", 0) + getattr(args, f"{_BEFORE}verbose", 0)
    for name in ("quiet", "debug"):
        setattr(args, name, getattr(args, name, False) or getattr(args, f"{_BEFORE}{name}", False))


class _Parser(argparse.ArgumentParser):
    # argparse's own errors are usage errors too: one line, exit 2 (not a usage dump).
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The full parser; tests use it to validate commands (e.g. docker-compose's)."""
    description = "Hyperparameter studies for the CVAE video-prediction model."
    parser = _Parser(prog="hpo", description=description, parents=[_common(_BEFORE)])
    parser.add_argument("--version", action="version", version=version_line(), help="print the version and exit")
    common = _common()
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub, common)
    return parser


def version_line() -> str:
    """`hpo --version`: this package's version, and Optuna's, which decides what a storage holds."""
    return f"hpo (vp-hpo) {hpo.__version__}, optuna {optuna.__version__}"


class _MaskingFilter(logging.Filter):
    """Masks every storage password (and piece of one) in a log record: a library's message may quote a URL."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__()
        self.urls = urls

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask_secrets(record.getMessage(), self.urls), None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info), self.urls)
        return True


def _storage_urls(argv: list[str]) -> list[str]:
    """Every URL that may carry a password: the arguments that look like URLs, env HPO_STORAGE and OPTUNA_STORAGE."""
    urls = [a.split("=", 1)[1] if a.startswith("--") and "=" in a else a for a in argv if "://" in a]
    envs = [os.environ.get(name, "") for name in ENV_STORAGES]
    return [u.strip() for u in [*urls, *envs] if u.strip()]


def _configure_logging(args: argparse.Namespace, urls: list[str]) -> None:
    level = logging.WARNING
    verbose = getattr(args, "verbose", 0)
    if verbose:
        level = logging.DEBUG if verbose > 1 else logging.INFO
    if getattr(args, "quiet", False):
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _MaskingFilter)]:
            handler.removeFilter(old)  # an earlier main() in this process (tests) masked other URLs
        if urls:
            handler.addFilter(_MaskingFilter(urls))
    optuna.logging.set_verbosity(max(level, logging.WARNING))  # Optuna's INFO lines would repeat ours
    # Library warnings (torch, Optuna) go through logging: shown with -v, else they would print lines before a
    # user mistake's one line (or between a run's progress lines).
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `hpo` and `python -m hpo`; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    urls = _storage_urls(argv)  # no message printed here may carry their passwords
    try:
        with warnings.catch_warnings():
            if not any(a.startswith(("-v", "--verbose")) for a in argv):
                warnings.simplefilter("ignore")  # until logging takes them (a warning while parsing or set-up)
            args = build_parser().parse_args(argv)
        _merge_global_flags(args)
        _configure_logging(args, urls)
        return int(args.func(args) or 0)
    except UsageError as exc:
        if debug:
            print(mask_secrets(traceback.format_exc(), urls), end="", file=sys.stderr)
        print(mask_secrets(f"error: {exc}", urls), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug or a runtime fault: the traceback as Python prints it, with passwords masked
        print(mask_secrets(traceback.format_exc(), urls), end="", file=sys.stderr)
        return 1
