"""`hpo dashboard [--storage URL] [--host 127.0.0.1] [--port 8080]`: optuna-dashboard on the study storage."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpo import results
from hpo.artifacts import ARTIFACTS_ENV, artifact_store_for, artifacts_dir
from hpo.dashboard import check_address, dashboard_url, serve
from hpo.errors import DashboardError
from hpo.storage import mask_url, open_storage, resolve_url


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: give a number in 1..65535")
    return port


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "dashboard",
        parents=[common],
        help="serve optuna-dashboard (live trials, plots, artifacts) for the storage",
        description="Serve optuna-dashboard on the study storage with the trials' artifacts (PSNR-per-frame "
        f"plots, frame strips). Artifacts are read from ${ARTIFACTS_ENV}, else the folder beside a SQLite or "
        "journal file (hpo.db -> hpo-artifacts/), else ./hpo-artifacts. Ctrl-C stops it.",
    )
    p.add_argument("--storage", help="storage URL (default: $HPO_STORAGE, else sqlite:///hpo.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--artifacts", help=f"artifact folder (default: ${ARTIFACTS_ENV} or the storage's, see above)")
    p.add_argument("--study", help="also print the address of this study's page (checks that it exists)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = resolve_url(args.storage)
    storage = open_storage(url, heartbeat=False)  # a viewer: it neither beats nor reaps
    study_id = None
    if args.study:
        study_id = storage.get_study_id_from_name(results.load(storage, args.study).study_name)
    if args.artifacts is not None and not Path(args.artifacts).is_dir():
        raise DashboardError(
            f"artifact folder {args.artifacts!r} not found: give the folder `hpo run` wrote to "
            f"(default {artifacts_dir(url)})"
        )
    check_address(args.host, args.port)
    folder = Path(args.artifacts).resolve() if args.artifacts is not None else artifacts_dir(url)
    store = artifact_store_for(url, folder)
    print(
        f"optuna-dashboard for {mask_url(url)} (artifacts in {folder}): "
        f"{dashboard_url(args.host, args.port, study_id)}  (Ctrl-C stops it)",
        flush=True,
    )
    serve(storage, args.host, args.port, store)
    return 0
