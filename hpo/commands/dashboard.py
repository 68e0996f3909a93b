"""`hpo dashboard [--storage URL] [--host 127.0.0.1] [--port 8080]`: optuna-dashboard on the study storage."""

from __future__ import annotations

import argparse

from hpo.artifacts import ARTIFACTS_ENV
from hpo.commands.common import add_command, add_storage
from hpo.dashboard import prepare, serve
from hpo.storage import mask_url, resolve_url


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: give a number in 1..65535")
    return port


HELP = "serve optuna-dashboard (live trials, plots, artifacts) for the storage"
DESCRIPTION = (
    "Serve optuna-dashboard on the study storage with the trials' artifacts (PSNR-per-frame "
    f"plots, frame strips). Artifacts are read from ${ARTIFACTS_ENV}, else the folder beside a SQLite or "
    "journal file (hpo.db -> hpo-artifacts/), else ./hpo-artifacts. Ctrl-C stops it."
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "dashboard", HELP, DESCRIPTION)
    add_storage(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--artifacts", help=f"artifact folder (default: ${ARTIFACTS_ENV} or the storage's, see above)")
    p.add_argument("--study", help="also print the address of this study's page (checks that it exists)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = resolve_url(args.storage)
    board = prepare(url, args.host, args.port, args.artifacts, args.study)
    print(
        f"optuna-dashboard for {mask_url(url)} (artifacts in {board.folder}): {board.address}  (Ctrl-C stops it)",
        flush=True,
    )
    serve(board.storage, args.host, args.port, board.store, quiet=args.quiet)
    return 0
