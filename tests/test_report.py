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
    assert args.study == "/elsewhere/my-spec.toml" and args.study_name == f"{study.study_name}-repro"
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


# --- issue 23: the reproduce line, what the plots leave out, bounds a config accepts, the schedule subtitle ---------


def test_reproduce_line_runs_a_new_study_with_the_recorded_seed(smoke, capsys: pytest.CaptureFixture[str]) -> None:
    """Run as printed, the line makes a new study beside the finished one (never re-joins it), with its seed and
    budget: one worker on the same CPU repeats its trials."""
    _, url, study = smoke
    line = reproduce_command(study, url)
    words = shlex.split(line)
    args = _run_parser().parse_args(words[1:])
    assert args.study_name == "smoke-repro" and args.seed == study.user_attrs["seed"]
    assert main([*words[1:], "-q"]) == 0
    capsys.readouterr()
    copy = optuna.load_study(study_name="smoke-repro", storage=open_storage(url, heartbeat=False))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    original = [t for t in study.trials if t.state in finished]
    again = [t for t in copy.trials if t.state in finished]
    assert [t.params for t in again] == [t.params for t in original]
    assert [t.value for t in again] == pytest.approx([t.value for t in original], abs=1e-6)
    assert len(optuna.load_study(study_name="smoke", storage=url).trials) == len(study.trials)  # left as it was
    assert _run_parser().parse_args(shlex.split(reproduce_command(study, url))[1:]).study_name == "smoke-repro-2"


def _pruned_study() -> optuna.Study:
    """6 complete trials with lr >= 1e-3 and 4 pruned ones, all below it (after epochs 1 and 2)."""
    lr = FloatDistribution(1e-5, 1e-1, log=True)
    study = optuna.create_study(direction="maximize")
    for i in range(6):
        v = 20.0 + i
        study.add_trial(
            create_trial(
                params={"lr": 1e-3 * (i + 1)},
                distributions={"lr": lr},
                value=v,
                intermediate_values={1: v - 2, 2: v - 1, 3: v},
            )
        )
    for i in range(4):
        steps = {1: 10.0 + i} if i < 3 else {1: 12.0, 2: 13.0}
        study.add_trial(
            create_trial(
                params={"lr": 1e-5 * (i + 1)},
                distributions={"lr": lr},
                state=TrialState.PRUNED,
                intermediate_values=steps,
            )
        )
    return study


def test_plots_of_complete_trials_say_what_they_leave_out() -> None:
    from hpo.report import left_out

    study = _pruned_study()
    lines = left_out(study)
    assert lines[0].startswith("These plots use the 6 COMPLETE trials only (of 10 trials): 4 PRUNED trials are left")
    assert "epoch 1 (3×), epoch 2 (1×)" in lines[0]
    assert lines[1] == "lr: 4 pruned trials below 0.001, where no trial completed (absent from these plots)"
    page = build_report(study, "sqlite:///x.db")
    for section, end in (("importances", "parallel"), ("parallel", "slices"), ("slices", "curves")):
        part = page[page.index(f'<section id="{section}">') : page.index(f'<section id="{end}">')]
        assert '<div class="caveat">' in part and "4 PRUNED trials are left out" in part
    assert '"name":"pruned (last value)"' in page.replace(": ", ":")  # the slice shows them apart


def test_the_caveat_is_there_when_nothing_is_left_out_too(smoke_html: str) -> None:
    assert '<div class="caveat">' in smoke_html and "COMPLETE trial" in smoke_html


def test_edge_warning_never_proposes_a_bound_the_config_rejects() -> None:
    dists = {
        "kl_anneal_cycle": IntDistribution(1, 10),
        "tfr": FloatDistribution(0.0, 1.0),
        "tfr_sde": IntDistribution(2, 20),
    }
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        create_trial(params={"kl_anneal_cycle": 9, "tfr": 0.5, "tfr_sde": 10}, distributions=dists, value=1.0)
    )
    study.add_trial(
        create_trial(params={"kl_anneal_cycle": 1, "tfr": 1.0, "tfr_sde": 2}, distributions=dists, value=2.0)
    )
    flagged = {line.split()[1]: line for line in edge_warnings(study)}
    assert sorted(flagged) == ["kl_anneal_cycle", "tfr", "tfr_sde"]
    assert "field goes no further (kl_anneal_cycle must be >= 1)" in flagged["kl_anneal_cycle"]
    assert "lower `low`" not in flagged["kl_anneal_cycle"]
    assert "field goes no further" in flagged["tfr"] and "[0, 1]" in flagged["tfr"]
    # tfr_sde may go lower, down to 0: the proposal is a bound the config takes.
    proposed = float(re.search(r"e\.g\. to ([-0-9.e]+)", flagged["tfr_sde"]).group(1))  # type: ignore[union-attr]
    assert 0 <= proposed < 2 and proposed == int(proposed)


def test_schedule_subtitle_counts_epochs_from_one(tiny_config) -> None:
    from hpo.report_plots import schedules_figure
    from model.schedules import teacher_forcing_ratio

    config = tiny_config(epochs=6, tfr=1.0, tfr_d_step=0.25, tfr_sde=2)
    trial = create_trial(params={}, distributions={}, value=1.0)
    fig = schedules_figure(config, trial)
    assert "minus 0.25 per epoch after epoch 3" in fig.layout.title.text
    tfr = [teacher_forcing_ratio(config, t) for t in range(6)]  # 1-based epochs 1..3 full, epoch 4 the first drop
    assert tfr[:3] == [1.0, 1.0, 1.0] and tfr[3] == 0.75
    assert list(fig.data[0].x[:4]) == [1, 2, 3, 4] and list(fig.data[0].y[:4]) == [1.0, 1.0, 1.0, 0.75]
