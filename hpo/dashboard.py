"""`hpo dashboard`: optuna-dashboard on the study storage, with the trials' artifacts (docs/ARCHITECTURE.md, "Outputs").

optuna-dashboard does the serving; this module only checks that the address is free first (so a busy port is
one line, not a traceback from inside the server), names the value of hpo studies made before studies stored
their metric name (`hpo.metric`), and builds the URL to print. `-q` serves through a quiet handler: no banner,
no line per request.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage

from hpo import results
from hpo.artifacts import artifact_store_for, artifacts_dir
from hpo.errors import DashboardError
from hpo.metric import is_hpo_study, name_metric
from hpo.storage import open_storage

__all__ = ["Dashboard", "check_address", "dashboard_url", "name_metrics", "prepare", "serve"]

log = logging.getLogger(__name__)


def check_address(host: str, port: int) -> None:
    """Bind (and release) host:port as the server will; a busy port or unknown host is a DashboardError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DashboardError(
            f"cannot listen on host {host!r} ({exc.strerror}): use an address of this machine, "
            "e.g. --host 127.0.0.1 (or 0.0.0.0 for every interface)"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # Like the server (wsgiref's HTTPServer sets SO_REUSEADDR): a port in TIME_WAIT is free, one listened on is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DashboardError(
                    f"port {port} on {host} is already in use (another dashboard?): pick a free one with "
                    f"--port, e.g. --port {port + 1 if port < 65535 else 8080}"
                ) from None
            if exc.errno == errno.EACCES:
                raise DashboardError(f"port {port} needs root privileges: use a port above 1023 with --port") from None
            raise DashboardError(f"cannot listen on {host}:{port} ({exc.strerror}): check --host and --port") from None


def dashboard_url(host: str, port: int, study_id: int | None = None) -> str:
    """The address to open in a browser (a wildcard bind is shown as this machine's name)."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    path = "/dashboard" if study_id is None else f"/dashboard/studies/{study_id}"
    return f"http://{shown}:{port}{path}"


def serve(
    storage: BaseStorage, host: str, port: int, artifact_store: FileSystemArtifactStore | Any, quiet: bool = False
) -> None:
    """Run optuna-dashboard until interrupted (blocks); `quiet`: without its banner and its line per request."""
    log.info("optuna-dashboard %s on %s:%d", optuna_dashboard.__version__, host, port)
    if not quiet:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=artifact_store)
        return
    # run_server always prints bottle's banner and wsgiref's request lines; its WSGI app on a quiet server does not.
    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    server_class = _IPv6Server if ":" in host else WSGIServer
    with make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler) as server:
        server.serve_forever()


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class _IPv6Server(WSGIServer):
    address_family = socket.AF_INET6


def name_metrics(storage: BaseStorage) -> int:
    """Give every hpo study without a metric name `hpo.metric.METRIC_NAME`; returns how many were named.

    Studies made before `hpo run` stored the name would show "Objective 0"; other studies are left alone.
    """
    named = 0
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        if is_hpo_study(study):
            named += name_metric(study)
    return named


@dataclass
class Dashboard:
    """What `serve` needs, checked: the storage, the artifact folder and its store, the address to print."""

    storage: BaseStorage
    folder: Path
    store: FileSystemArtifactStore
    address: str


def prepare(url: str, host: str, port: int, artifacts: str | None = None, study: str | None = None) -> Dashboard:
    """Open the storage (a viewer: it neither beats nor reaps), check the study, artifact folder and address.

    Raises:
        StudyError: `study` is not in the storage. DashboardError: no such artifact folder, or a busy address.
    """
    storage = open_storage(url, heartbeat=False, create=False)
    name_metrics(storage)  # a viewer, but this one write is harmless: an attr the dashboard reads, set once
    study_id = storage.get_study_id_from_name(results.load(storage, study).study_name) if study else None
    if artifacts is not None and not Path(artifacts).is_dir():
        raise DashboardError(
            f"artifact folder {artifacts!r} not found: give the folder `hpo run` wrote to "
            f"(default {artifacts_dir(url)})"
        )
    check_address(host, port)
    folder = Path(artifacts).resolve() if artifacts is not None else artifacts_dir(url)
    return Dashboard(storage, folder, artifact_store_for(url, folder), dashboard_url(host, port, study_id))
