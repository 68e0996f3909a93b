"""`hpo run` / `status` / `best` / `export` end to end on the smoke spec, and their bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest

from hpo.cli import main
from hpo.results import trial_config
from model.config import load_config

SMOKE = Path(__file__).resolve().parent.parent / "studies" / "smoke.toml"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


# `smoke_study` (conftest): `hpo run --study smoke --n-trials 4` once per session, 4 finished trials in SQLite.


def test_run_status_best(smoke_study, capsys: pytest.CaptureFixture[str]) -> None:
    url = smoke_study.url
    study = optuna.load_study(study_name="smoke", storage=url)
    done = [t for t in study.trials if t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 4
    first = study.trials[0]
    assert {"curves", "seconds", "device"} <= set(first.user_attrs) or "config" in first.user_attrs

    code, out, err = cli(capsys, "status", "--storage", url)
    assert code == 0 and not err
    line = next(x for x in out.splitlines() if x.startswith("smoke:"))
    assert f"best {study.best_value:.2f} dB (trial {study.best_trial.number})" in line

    code, out, err = cli(capsys, "best", "--study", "smoke", "--storage", url, "--json")
    assert code == 0
    best = json.loads(out)
    assert best["trial"] == study.best_trial.number and best["value"] == pytest.approx(study.best_value)
    assert best["params"] == study.best_trial.params
    assert best["config"]["lr"] == study.best_trial.params["lr"]


def test_export_then_train_reproduces_the_trial(
    smoke_study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = smoke_study.copy(tmp_path / "study").url  # the export attaches a file to the study
    study = optuna.load_study(study_name="smoke", storage=url)
    out_toml = tmp_path / "best.toml"
    code, out, err = cli(capsys, "export", "--study", "smoke", "--storage", url, "-o", str(out_toml))
    assert code == 0 and not err, err
    exported = load_config(out_toml)
    assert exported == trial_config(study, study.best_trial)  # every field, exactly
    for k, v in study.best_trial.params.items():
        assert getattr(exported, k) == v

    code, out, err = cli(capsys, "train", str(out_toml), "--set", f"out={tmp_path / 'run'}", "-q")
    assert code == 0, err
    psnr = float(re.search(r"val PSNR ([0-9.]+) dB", out).group(1))  # type: ignore[union-attr]
    assert psnr == pytest.approx(study.best_value, abs=0.006)  # same seed, CPU: the same run (printed to 0.01)


def test_changed_space_or_direction_is_refused_and_names_a_new_study(
    smoke_study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = smoke_study.copy(tmp_path / "study").url  # `hpo run` on it, refused: the shared study stays as it was
    before = len(optuna.load_study(study_name="smoke", storage=url).trials)
    text = SMOKE.read_text()
    changed = {
        "space": text.replace("high = 1e-2", "high = 2e-2"),
        "direction": text.replace('direction = "maximize"', 'direction = "minimize"'),
    }
    for what, spec_text in changed.items():
        spec = tmp_path / f"{what}.toml"
        spec.write_text(spec_text)
        code, _, err = cli(capsys, "run", "--study", str(spec), "--n-trials", "5", "--storage", url, "-q")
        assert code == 2 and len(err) == 1, err
        assert "--study-name smoke-2" in err[0] and ("search space" if what == "space" else "direction") in err[0]
    assert len(optuna.load_study(study_name="smoke", storage=url).trials) == before  # nothing added


@pytest.mark.parametrize("command", ["best", "export", "status"])
def test_unknown_study_is_one_line(
    command: str, smoke_study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = smoke_study.url
    extra = ["-o", str(tmp_path / "x.toml")] if command == "export" else []
    code, _, err = cli(capsys, command, "--study", "nope", "--storage", url, *extra)
    assert code == 2 and len(err) == 1
    assert "unknown study 'nope'" in err[0] and "smoke" in err[0]
    assert not (tmp_path / "x.toml").exists()


@pytest.mark.parametrize("command", ["best", "export"])
def test_study_without_a_complete_trial_is_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    study = optuna.create_study(study_name="empty", storage=url, direction="maximize")
    study.ask()  # one RUNNING trial, none complete
    extra = ["-o", str(tmp_path / "x.toml")] if command == "export" else []
    code, _, err = cli(capsys, command, "--study", "empty", "--storage", url, *extra)
    assert code == 2 and len(err) == 1
    assert "no complete trial" in err[0] and "hpo run --study empty" in err[0]
    assert not (tmp_path / "x.toml").exists()


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first enqueued trial trains with lr 1e6 (its loss turns NaN in epoch 1); the second is sane.
    text = SMOKE.read_text().replace("high = 1e-2", "high = 1e7")
    enqueue = '\n[[enqueue]]\nlr = {}\ntfr = 1.0\nkl_anneal_type = "Monotonic"\n'
    spec = tmp_path / "nan.toml"
    spec.write_text(text + enqueue.format("1e6") + enqueue.format("1e-3"))
    url = f"sqlite:///{tmp_path / 'n.db'}"
    code, _, err = cli(capsys, "run", "--study", str(spec), "--n-trials", "1", "--storage", url, "-q")
    assert code == 0, err
    study = optuna.load_study(study_name="smoke", storage=url)
    first, second = study.trials[:2]
    assert first.state.name == "FAIL" and first.params["lr"] == 1e6
    assert first.user_attrs["fail_reason"] == "training diverged at epoch 1: loss is nan"
    assert second.state.name == "COMPLETE" and second.params["lr"] == 1e-3  # FAIL did not use the budget
    assert len(study.trials) == 2


def test_first_line_names_the_pruner_with_its_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    code, out, _ = cli(capsys, "run", "--study", "smoke", "--n-trials", "1", "--storage", url)
    first = out.splitlines()[0]
    assert code == 0 and first.startswith("study smoke | data synthetic (built-in) | profile ")
    assert "| sampler tpe (seed 0) | pruner median (n_startup_trials 2, n_warmup_steps 0) | device cpu" in first
