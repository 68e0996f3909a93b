"""Options several commands share, declared once, and the one way a command opens an existing study."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import optuna
import yaml

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


FORMATS = ("json", "table", "yaml")


def add_format(p: argparse.ArgumentParser) -> None:
    """`-f json|table|yaml`, as the `optuna` command takes it; without it, the command's own lines."""
    p.add_argument(
        "-f", "--format", choices=FORMATS, help="print as json, table or yaml, like the optuna command (default: text)"
    )


def render(data: dict[str, Any], fmt: str, rows: list[dict[str, Any]] | None = None) -> str:
    """`data` as JSON or YAML; as a table, `rows` (default: `data` itself as one row)."""
    if fmt == "json":
        return json.dumps(data, indent=1, sort_keys=True)
    if fmt == "yaml":
        return str(yaml.safe_dump(data, sort_keys=True)).rstrip()
    return table(rows if rows is not None else [data])


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as the `optuna` command's `-f table` draws them: a boxed grid, numbers right-aligned; every row's
    keys are columns (in first-seen order), a missing cell is blank."""
    header = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(k)) for k in header] for row in rows]
    numeric = [all(isinstance(row.get(k), int | float) or row.get(k) is None for row in rows) for k in header]
    widths = [max([len(k), *(len(c[i]) for c in cells)]) for i, k in enumerate(header)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def joined(values: list[str]) -> str:
        padded = (f" {v:>{w}} " if n else f" {v:<{w}} " for v, w, n in zip(values, widths, numeric, strict=True))
        return "|" + "|".join(padded) + "|"

    return "\n".join([line, joined(header), line, *(joined(c) for c in cells), line])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)
