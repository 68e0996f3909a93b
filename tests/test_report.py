"""`hpo report`: every section from a real tiny study, offline HTML, warnings, and bad input.

See docs/ARCHITECTURE.md, "Outputs".
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from plotly.offline import get_plotlyjs

from hpo.cli import main
from hpo.report import build_report, edge_warnings, reproduce_command
from hpo.storage import open_storage
from model.config import parse_sets

SECTIONS = {
    "summary": "Summary",
    "warnings": "Warnings",
    "history": "Optimization history",
    "importances": "Parameter importances",
    "parallel": "Parallel coordinates",
    "slices": "Slice plots",
    "curves": "Learning curves",
    "schedules": "Schedules of the best config",
    "per-frame": "PSNR per frame of the best trial",
    "states": "Trial states",
}
FAIL_REASON = "diverged: loss nan at epoch 1"


def _run_parser() -> argparse.ArgumentParser:
    """The `hpo run` parser alone, to check that the report's reproduce line is a valid command."""
    from hpo.commands import run

    parser = argparse.ArgumentParser(prog="hpo")
    run.register(parser.add_subparsers(dest="command"), argparse.ArgumentParser(add_help=False))
    return parser


def _report(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def smoke(smoke_study, tmp_path_factory: pytest.TempPathFactory):
    """4 real tiny trials (conftest's `hpo run --study smoke --n-trials 4`, copied) plus one FAIL with its reason,
    as workers record."""
    run = smoke_study.copy(tmp_path_factory.mktemp("report") / "study")
    folder, url, study = run.folder, run.url, run.load()
    failed = study.ask()
    failed.set_user_attr("fail_reason", FAIL_REASON)
    study.tell(failed, state=TrialState.FAIL)
    return folder, url, study


@pytest.fixture(scope="module")
def smoke_html(smoke, tmp_path_factory: pytest.TempPathFactory) -> str:
    _, url, _ = smoke
    out = tmp_path_factory.mktemp("html") / "report.html"
    assert main(["report", "--study", "smoke", "--storage", url, "-o", str(out)]) == 0
    return out.read_text()


def test_report_has_every_section(smoke_html: str, smoke) -> None:
    _, _, study = smoke
    for sid, title in SECTIONS.items():
        assert f'<section id="{sid}"><h2>{title}</h2>' in smoke_html
    # A figure (not a "needs more trials" note) in every plot section: 4 finished trials are enough for all.
    figures = ["history", "imp", "parallel", "curves", "schedules", "psnr-per-frame", "states"]
    figures += [f"slice-{i}" for i in range(len(study.best_trial.params))]
    for fig in figures:
        assert f'id="fig-{fig}"' in smoke_html, fig
    assert smoke_html.count("Plotly.newPlot(") == len(figures)
    best = study.best_trial
    assert f"Best trial: {best.number}, val PSNR {best.value:.4f} dB" in smoke_html
    for name in best.params:
        assert f"<td>{name}</td>" in smoke_html
    assert FAIL_REASON in smoke_html and "1 of 5 trials failed (20%)" in smoke_html
    assert "storage" in smoke_html and "tpe (seed 0)" in smoke_html and "<td>median</td>" in smoke_html


def test_report_opens_offline(smoke_html: str) -> None:
    assert smoke_html.count(get_plotlyjs()[:300]) == 1  # plotly.js inlined exactly once
    assert not re.search(r"<script[^>]*\bsrc\s*=", smoke_html, re.I)  # no script loaded from anywhere
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", smoke_html, re.I)


def test_reproduce_command_is_a_valid_hpo_run(smoke_html: str, smoke) -> None:
    _, url, study = smoke
    line = re.search(r"<pre>(hpo run [^<]*)</pre>", smoke_html)
    assert line is not None
    words = shlex.split(line.group(1).replace("&#x27;", "'"))
    args = _run_parser().parse_args(words[1:])
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert (args.study, args.n_trials, args.storage) == ("smoke", len(finished), url)
    assert (args.sampler, args.pruner, args.seed, args.device) == ("tpe", "median", 0, "cpu")


def test_reproduce_command_recovers_overrides_and_masks_the_password() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("spec_path", "/elsewhere/my-spec.toml")
    study.set_user_attr("fixed", json.dumps({"epochs": 2}))
    study.set_user_attr("sampler", "gp")
    config = {"epochs": 2, "lr": 1e-3, "batch_size": 4, "data": "/data/lab", "lr_milestones": [2, 5]}
    study.add_trial(
        create_trial(
            params={"lr": 1e-3},
            distributions={"lr": FloatDistribution(1e-5, 1e-2, log=True)},
            value=20.0,
            user_attrs={"config": json.dumps(config)},
        )
    )
    line = reproduce_command(study, "postgresql+psycopg://me:***@db/hpo")
    args = _run_parser().parse_args(shlex.split(line)[1:])
    assert args.study == "/elsewhere/my-spec.toml" and args.study_name == study.study_name
    assert args.sampler == "gp" and args.data == "/data/lab" and args.storage == "postgresql+psycopg://me:***@db/hpo"
    assert parse_sets(args.sets) == {"batch_size": 4, "lr_milestones": [2, 5]}


def _edge_study() -> optuna.Study:
    dists = {
        "x": FloatDistribution(0.0, 1.0),
        "n": IntDistribution(1, 100),
        "lr_mid": FloatDistribution(1e-5, 1e-1, log=True),
        "lr_low": FloatDistribution(1e-5, 1e-1, log=True),
        "kind": CategoricalDistribution(["a", "b"]),
    }
    study = optuna.create_study(direction="maximize")
    best = {"x": 0.97, "n": 3, "lr_mid": 1e-3, "lr_low": 1.5e-5, "kind": "a"}
    other = {"x": 0.5, "n": 50, "lr_mid": 1e-2, "lr_low": 1e-2, "kind": "b"}
    study.add_trial(create_trial(params=other, distributions=dists, value=1.0, intermediate_values={0: 0.5, 1: 1.0}))
    study.add_trial(create_trial(params=best, distributions=dists, value=2.0, intermediate_values={0: 1.5, 1: 2.0}))
    return study


def test_edge_warnings_are_log_aware() -> None:
    lines = edge_warnings(_edge_study())
    flagged = {line.split()[1]: line for line in lines}
    # lr_mid = 1e-3 is 1% of [1e-5, 1e-1] on a linear scale but the middle on the log scale the sampler uses.
    assert sorted(flagged) == ["lr_low", "n", "x"]
    assert "HIGH end" in flagged["x"] and "raise `high`" in flagged["x"]
    assert "LOW end" in flagged["n"] and "LOW end" in flagged["lr_low"] and "(log scale)" in flagged["lr_low"]


def test_edge_warnings_appear_in_warnings_and_above_their_slice_plot() -> None:
    page = build_report(_edge_study(), "sqlite:///x.db")
    warnings = page[page.index('<section id="warnings">') : page.index('<section id="history">')]
    slices = page[page.index('<section id="slices">') : page.index('<section id="curves">')]
    for name in ("x", "n", "lr_low"):
        assert f"best {name} = " in warnings and f"best {name} = " in slices
    assert "best lr_mid" not in page
    assert "None: no best value on a search-space edge" not in warnings


def test_importance_needs_two_complete_trials() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, value=1.0))
    page = build_report(study, "sqlite:///x.db")
    imp = page[page.index('<section id="importances">') : page.index('<section id="parallel">')]
    assert "needs at least 2 complete trials; this study has 1" in imp and "fig-imp" not in imp
    assert 'id="fig-history"' in page  # one trial is enough for the history


def test_study_without_finished_trials_still_renders(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="fresh", direction="maximize")
    failed = study.ask({"lr": FloatDistribution(1e-4, 1e-2, log=True)})
    failed.set_user_attr("fail_reason", "worker gone (pid 7 on box exited)")
    study.tell(failed, state=TrialState.FAIL)
    study.ask()  # still RUNNING
    out = tmp_path / "r.html"
    code, stdout, err = _report(["--study", "fresh", "--storage", url, "-o", str(out)], capsys)
    assert code == 0, err
    assert "no finished trial" in stdout
    page = out.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    assert "No trial has finished (COMPLETE) yet" in page
    assert "worker gone (pid 7 on box exited)" in page and 'id="fig-states"' in page
    assert "fig-history" not in page and "fig-schedules" not in page


def test_empty_study_renders(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="empty")
    out = tmp_path / "r.html"
    code, _, err = _report(["--study", "empty", "--storage", url, "-o", str(out)], capsys)
    assert code == 0, err
    assert "The study has no trials yet." in out.read_text()


def test_unknown_study_is_one_line(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="there")
    out = tmp_path / "r.html"
    code, _, err = _report(["--study", "nope", "--storage", url, "-o", str(out)], capsys)
    assert code == 2
    assert err.startswith("error: unknown study 'nope'") and "there" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_unwritable_output_is_one_line_and_writes_nothing(tmp_path: Path, capsys, where: str) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="s", direction="maximize")
    study.add_trial(create_trial(params={}, distributions={}, value=1.0))
    blocker = tmp_path / "blocker"
    if where == "under-a-file":
        blocker.write_text("x")
        target = blocker / "r.html"
    else:
        blocker.mkdir()
        target = blocker
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = _report(["--study", "s", "--storage", url, "-o", str(target)], capsys)
    assert code == 2
    assert err.startswith(f"error: cannot write '{target}'") and "-o" in err
    assert (f"{blocker} is a file, not a folder" if where == "under-a-file" else "Is a directory") in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no temp file left behind


@pytest.mark.postgres
def test_postgres_report_never_shows_the_password(pg_url: str, tmp_path: Path, capsys) -> None:
    url = pg_url.replace("@", ":s3cret@", 1)  # the server trusts local users and ignores it; it must never print
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="pg", direction="maximize")
    study.set_user_attr("seed", 3)
    dist = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}
    for i, lr in enumerate((1e-3, 2e-3)):
        study.add_trial(
            create_trial(params={"lr": lr}, distributions=dist, value=10.0 + i, intermediate_values={0: 9.0})
        )
    out = tmp_path / "r.html"
    code, stdout, err = _report(["--study", "pg", "--storage", url, "-o", str(out)], capsys)
    assert code == 0, err
    page = out.read_text()
    assert "s3cret" not in page + stdout + err
    masked = url.replace(":s3cret@", ":***@")
    assert f"<td>{masked}</td>" in page and f"--storage {shlex.quote(masked)}" in page.replace("&#x27;", "'")
    assert 'id="fig-imp"' in page  # two complete trials: importances are drawn
