"""Options several commands share, declared once, and the one way a command opens an existing study."""

from __future__ import annotations

import argparse

import optuna

from hpo import results
from hpo.storage import open_storage, resolve_url


def add_command(
    sub: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    name: str,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """The parser of command `name`, with the options every command takes (-v, -q, --debug)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help, description=description)
    return parser


def add_study(p: argparse.ArgumentParser, required: bool = True, help: str = "study name") -> None:
    p.add_argument("--study", required=required, help=help)


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="storage URL (default: $HPO_STORAGE, else sqlite:///hpo.db)")


def add_sets(p: argparse.ArgumentParser, help: str = "override a field (repeatable)") -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE", help=help)


def load_study(args: argparse.Namespace, heartbeat: bool = True) -> optuna.Study:
    """The study `--study` names in the storage `--storage` names (StudyError when unknown).

    Never creates a storage: a missing SQLite or journal file is a StorageError naming it.
    """
    return results.load(open_storage(resolve_url(args.storage), heartbeat=heartbeat, create=False), args.study)
