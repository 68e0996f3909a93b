"""`hpo dashboard`: optuna-dashboard serves the study, its trials and their artifacts over HTTP.

See docs/ARCHITECTURE.md, "Outputs".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.artifacts import ARTIFACTS_ENV
from hpo.cli import main
from hpo.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def start_dashboard(url: str, port: int, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`python -m hpo dashboard` as a user starts it; returns the process and the address it printed."""
    env = {k: v for k, v in os.environ.items() if k != ARTIFACTS_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--storage", url, "--port", str(port), *extra],
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the server's access log
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dashboard exited with {proc.returncode}: {line}")
        try:
            get_json(f"http://127.0.0.1:{port}/api/meta")
            return proc, line
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("dashboard did not answer within 60 s")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def study_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two real tiny trials of the smoke study, with their artifacts, on a fresh SQLite file."""
    from hpo.run import RunOptions, run_study

    url = f"sqlite:///{tmp_path_factory.mktemp('dash')}/hpo.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ARTIFACTS_ENV, raising=False)
        run_study(RunOptions(study="smoke", n_trials=2, storage=url, device="cpu", quiet=True))
    return url


@pytest.fixture(scope="module")
def served(study_url: str) -> Iterator[tuple[str, int, str]]:
    port = free_port()
    proc, line = start_dashboard(study_url, port, "--study", "smoke")
    try:
        yield study_url, port, line
    finally:
        stop(proc)


def test_dashboard_lists_the_study_and_its_trials(served) -> None:
    url, port, line = served
    study = optuna.load_study(study_name="smoke", storage=open_storage(url, heartbeat=False))
    summaries = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["smoke"]
    study_id = summaries[0]["study_id"]
    assert line.strip().endswith(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}  (Ctrl-C stops it)")
    detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}?after=0")
    assert [t["number"] for t in detail["trials"]] == [t.number for t in study.trials]
    assert [t["state"] for t in detail["trials"]] == [t.state.name.capitalize() for t in study.trials]
    best = detail["best_trials"][0]
    assert best["number"] == study.best_trial.number and best["values"] == [study.best_value]


def test_dashboard_serves_the_trial_artifacts(served) -> None:
    url, port, _ = served
    study = optuna.load_study(study_name="smoke", storage=open_storage(url, heartbeat=False))
    study_id = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"][0]["study_id"]
    detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}?after=0")
    complete = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert len(complete) == sum(t.state == TrialState.COMPLETE for t in study.trials) >= 1
    for t in complete:
        names = sorted(a["filename"] for a in t["artifacts"])
        assert names == [f"trial-{t['number']}-frames.png", f"trial-{t['number']}-psnr-per-frame.png"]
        for a in t["artifacts"]:
            path = f"/artifacts/{t['study_id']}/{t['trial_id']}/{a['artifact_id']}"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                assert r.headers["Content-Type"] == "image/png"
                assert r.read(8) == b"\x89PNG\r\n\x1a\n"


def test_dashboard_listens_on_loopback_only_by_default(served) -> None:
    _, port, _ = served
    # 127.0.0.2 is this machine too, but not the address the server bound: --host 127.0.0.1 is the default.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.2:{port}/api/meta", timeout=5)


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["dashboard", *args])
    return code, capsys.readouterr().err


def _one_line(err: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_port_in_use_is_one_line(study_url: str, capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _cli(["--storage", study_url, "--port", str(port)], capsys)
    assert code == 2
    _one_line(err)
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err


def test_unknown_study_is_one_line(study_url: str, capsys) -> None:
    code, err = _cli(["--storage", study_url, "--port", str(free_port()), "--study", "nope"], capsys)
    assert code == 2
    _one_line(err)
    assert "unknown study 'nope'" in err and "smoke" in err


def test_missing_artifact_folder_is_one_line(study_url: str, tmp_path: Path, capsys) -> None:
    code, err = _cli(["--storage", study_url, "--port", str(free_port()), "--artifacts", str(tmp_path / "x")], capsys)
    assert code == 2
    _one_line(err)
    assert "artifact folder" in err and "hpo-artifacts" in err


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_bad_port_is_one_line(study_url: str, capsys, port: str) -> None:
    code, err = _cli(["--storage", study_url, "--port", port], capsys)
    assert code == 2
    _one_line(err)
    assert "1..65535" in err


def test_unknown_host_is_one_line(study_url: str, capsys) -> None:
    code, err = _cli(["--storage", study_url, "--host", "no-such-host.invalid", "--port", str(free_port())], capsys)
    assert code == 2
    _one_line(err)
    assert "--host 127.0.0.1" in err


def test_dashboard_names_the_metric(served) -> None:
    _, port, _ = served
    study_id = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"][0]["study_id"]
    detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}?after=0")
    assert detail["objective_names"] == ["val PSNR (dB)"]  # the value axis, not "Objective 0"


def test_older_hpo_studies_get_the_metric_name_and_others_do_not(tmp_path: Path) -> None:
    from hpo.dashboard import name_metrics

    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat=False)
    old = optuna.create_study(storage=storage, study_name="old", direction="maximize")
    old.set_user_attr("spec_path", "studies/smoke.toml")  # made by `hpo run` before metric names were stored
    optuna.create_study(storage=storage, study_name="old.confirm", direction="maximize")
    optuna.create_study(storage=storage, study_name="plain", direction="minimize")
    assert name_metrics(storage) == 2 and name_metrics(storage) == 0
    names = {n: optuna.load_study(study_name=n, storage=storage).metric_names for n in ("old", "old.confirm", "plain")}
    assert names == {"old": ["val PSNR (dB)"], "old.confirm": ["val PSNR (dB)"], "plain": None}


def test_quiet_dashboard_prints_no_banner_and_no_request_lines(study_url: str, tmp_path: Path) -> None:
    port = free_port()
    err = tmp_path / "err.txt"
    env = {k: v for k, v in os.environ.items() if k != ARTIFACTS_ENV}
    with err.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo", "dashboard", "-q", "--storage", study_url, "--port", str(port)],
            cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"http://127.0.0.1:{port}/api/studies")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline and proc.poll() is None, "dashboard did not answer"
                time.sleep(0.3)
        for _ in range(3):
            get_json(f"http://127.0.0.1:{port}/api/meta")
    finally:
        stop(proc)
    rest = proc.stdout.read()
    assert line.startswith("optuna-dashboard for ") and rest == ""  # the address, once: the result a user needs
    assert err.read_text() == ""  # no bottle banner, no "GET /api/meta" line per request
