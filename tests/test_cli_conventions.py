"""Issue 23's rough edges of a user's day: help that matches the code, `-f json|table|yaml`, `-o -`, Optuna's
storage conventions, counts in words, a study's metric name, and an export attached to its study once.

See docs/ARCHITECTURE.md, "Storage" and "Outputs".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.artifacts import get_all_artifact_meta
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial
from support import assert_usage_error, cli

import hpo
from hpo.cli import main
from hpo.metric import METRIC_NAME, metric_name
from hpo.pruners import PRUNERS
from hpo.results import trial_config
from hpo.storage import open_storage, resolve_source, resolve_url
from model.words import plural

pytestmark = pytest.mark.usefixtures("one_thread")


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"hpo (vp-hpo) {hpo.__version__}") and hpo.__version__ == version("vp-hpo")


@pytest.mark.parametrize(
    ("argv", "verbose", "quiet", "debug"),
    [
        (["-v", "status"], 1, False, False),
        (["status", "-v"], 1, False, False),
        (["-v", "status", "-v"], 2, False, False),
        (["-q", "--debug", "status"], 0, True, True),
        (["status", "-q"], 0, True, False),
    ],
)
def test_global_flags_go_before_or_after_the_command(argv: list[str], verbose: int, quiet: bool, debug: bool) -> None:
    from hpo.cli import _merge_global_flags, build_parser

    args = build_parser().parse_args(argv)
    _merge_global_flags(args)
    assert (args.verbose, args.quiet, args.debug) == (verbose, quiet, debug)


def test_verbose_before_the_command_logs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    open_storage(url)
    done = subprocess.run(
        [sys.executable, "-m", "hpo", "-v", "status", "--storage", url], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "0 studies" in done.stdout
    assert f"INFO hpo.storage: storage {url} (from --storage)" in done.stderr


def test_debug_before_the_command_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "--debug", "status", "--storage", f"sqlite:///{tmp_path / 'missing.db'}")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_run_help_lists_every_pruner(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "rungs" in PRUNERS and " | ".join(PRUNERS) in text


def test_plural() -> None:
    assert [plural(n, "video") for n in (0, 1, 2)] == ["0 videos", "1 video", "2 videos"]
    assert plural(1, "study") == "1 study" and plural(3, "study") == "3 studies"


def test_train_says_one_epoch_and_one_val_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sets = ["epochs=1", "synth_val_videos=1", "synth_train_frames=24", "frame_h=8", "frame_w=16", "f_dim=8"]
    sets += ["l_dim=4", "n_dim=4", "d_out_dim=8", "train_vi_len=4", "val_vi_len=6", "batch_size=2", "device=cpu"]
    sets += [f"out={tmp_path / 'run'}"]
    code, out, err = cli(capsys, "train", *[a for s in sets for a in ("--set", s)])
    assert code == 0, err
    assert "1 val video;" in out and "after 1 epoch in" in out
    assert "1 val videos" not in out and "1 epochs" not in out


# --- storage: OPTUNA_STORAGE, Optuna's journal form -------------------------------------------------------------


def test_optuna_storage_is_read_after_hpo_storage_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    assert resolve_source(None) == ("sqlite:///hpo.db", "default")
    optuna_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    monkeypatch.setenv("OPTUNA_STORAGE", optuna_url)
    assert resolve_source(None) == (optuna_url, "$OPTUNA_STORAGE")
    monkeypatch.setenv("HPO_STORAGE", "journal:///hpo.log")
    assert resolve_source(None) == ("journal:///hpo.log", "$HPO_STORAGE")
    assert resolve_source("sqlite:///flag.db") == ("sqlite:///flag.db", "--storage")
    monkeypatch.delenv("HPO_STORAGE")
    open_storage(optuna_url)
    code, out, _ = cli(capsys, "status")
    assert code == 0 and out.startswith(f"storage {optuna_url} (from $OPTUNA_STORAGE): 0 studies")


def test_optuna_storage_password_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo.cli import _storage_urls

    url = "postgresql+psycopg://me:s3cr3tpw@127.0.0.1:1/x"
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.setenv("OPTUNA_STORAGE", url)
    assert _storage_urls([]) == [url]  # main() masks its password in every line it prints


def test_a_plain_path_is_a_journal_as_on_optunas_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_url("hpo.log") == "journal:///hpo.log"
    assert resolve_url(str(tmp_path / "a.log")) == f"journal:///{tmp_path / 'a.log'}"  # journal:////abs
    study = optuna.create_study(storage=open_storage("journal:///hpo.log"), study_name="j", direction="maximize")
    study.add_trial(create_trial(params={}, distributions={}, value=1.5))
    code, out, _ = cli(capsys, "status", "--storage", "hpo.log")  # Optuna's form, read by hpo
    assert code == 0 and "j: complete 1" in out
    # hpo's journal is the file the `optuna` command reads with the same plain path.
    optuna_cli = Path(sys.executable).parent / "optuna"
    listed = subprocess.run(
        [str(optuna_cli), "studies", "--storage", "hpo.log", "-f", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert [s["name"] for s in json.loads(listed.stdout)] == ["j"]


def test_a_plain_sqlite_path_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "status", "--storage", "hpo.db")
    assert_usage_error(code, err, "sqlite:///hpo.db")


# --- -f json|table|yaml ------------------------------------------------------------------------------------------


def _plain_study(url: str) -> optuna.Study:
    """A study not made by hpo (no metric name, no spec): its values are not dB."""
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="plain", direction="minimize")
    study.add_trial(create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, value=0.25))
    return study


def test_status_formats_and_units(smoke_study, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = smoke_study.copy(tmp_path / "s").url
    _plain_study(url)
    smoke = smoke_study.load()
    code, out, _ = cli(capsys, "status", "--storage", url)
    assert code == 0
    assert "plain: complete 1; best 0.25 (trial 0)" in out  # not dB: not a PSNR study
    assert "smoke: " in out and f"best {smoke.best_value:.2f} dB" in out
    code, out, _ = cli(capsys, "status", "--storage", url, "-f", "json")
    data = json.loads(out)
    by_name = {s["study"]: s for s in data["studies"]}
    assert data["storage_from"] == "--storage" and by_name["smoke"]["metric"] == METRIC_NAME
    assert by_name["plain"]["metric"] is None and by_name["plain"]["best_value"] == 0.25
    assert by_name["smoke"]["best_trial"] == smoke.best_trial.number
    code, out, _ = cli(capsys, "status", "--storage", url, "-f", "yaml")
    assert yaml.safe_load(out) == data
    code, out, _ = cli(capsys, "status", "--storage", url, "-f", "table")
    lines = out.splitlines()
    assert lines[0].startswith("+--") and "| study" in lines[1] and "best_value" in lines[1]
    assert any(line.startswith("| smoke ") and METRIC_NAME in line for line in lines)


def test_best_formats_and_json_alias(smoke_study, capsys: pytest.CaptureFixture[str]) -> None:
    url = smoke_study.url
    code, out, _ = cli(capsys, "best", "--study", "smoke", "--storage", url, "--json")
    assert code == 0
    as_json = json.loads(out)
    assert json.loads(cli(capsys, "best", "--study", "smoke", "--storage", url, "-f", "json")[1]) == as_json
    assert yaml.safe_load(cli(capsys, "best", "--study", "smoke", "--storage", url, "-f", "yaml")[1]) == as_json
    table = cli(capsys, "best", "--study", "smoke", "--storage", url, "-f", "table")[1]
    assert "| field" in table and "| params.lr " in table and "| trial " in table


def test_top_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo.commands import top as top_command

    class Cand:
        def __init__(self, index: int, trial: int, values: list[float]) -> None:
            from hpo.racing import interval

            self.index, self.trial, self.search_value, self.values = index, trial, values[0] + 1, values
            self.seeds, self.interval = [1, 2], interval(values)

    class Outcome:
        seeds_planned = [1, 2]
        candidates = [Cand(0, 3, [20.0, 21.0]), Cand(1, 5, [22.0, 23.0])]

    url = f"sqlite:///{tmp_path / 't.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="t", direction="maximize")
    monkeypatch.setattr(top_command, "top", lambda *a, **k: Outcome())
    code, out, _ = cli(capsys, "top", "--study", "t", "--storage", url, "-f", "json")
    data = json.loads(out)
    assert code == 0 and data["study"] == study.study_name
    assert [(r["rank"], r["trial"], r["mean"]) for r in data["ranked"]] == [(1, 5, 22.5), (2, 3, 20.5)]
    assert yaml.safe_load(cli(capsys, "top", "--study", "t", "--storage", url, "-f", "yaml")[1]) == data
    assert "| rank " in cli(capsys, "top", "--study", "t", "--storage", url, "-f", "table")[1]


def test_bad_format_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "status", "-f", "xml")
    assert_usage_error(code, err, "invalid choice: 'xml'", "json", "yaml")


# --- -o -, export attached once ------------------------------------------------------------------------------------


def test_export_to_stdout_and_attached_once(smoke_study, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "s"
    url = smoke_study.copy(folder).url
    monkey_cwd = tmp_path / "cwd"
    monkey_cwd.mkdir()
    code, out, err = cli(capsys, "export", "--study", "smoke", "--storage", url, "-o", "-")
    assert code == 0 and out.startswith("# vp-hpo export: study smoke") and "wrote standard output" in err
    assert not Path("-").exists()
    study = smoke_study.load()
    toml = tmp_path / "best.toml"
    for _ in range(2):
        assert cli(capsys, "export", "--study", "smoke", "--storage", url, "-o", toml)[0] == 0
    assert toml.read_text() == out  # the same TOML, to a file
    loaded = optuna.load_study(study_name="smoke", storage=open_storage(url, heartbeat=False))
    metas = get_all_artifact_meta(loaded)
    assert len(metas) == 1 and metas[0].filename.startswith(f"best-config-trial-{study.best_trial.number}-")


def test_report_to_stdout(smoke_study, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "report", "--study", "smoke", "--storage", smoke_study.url, "-o", "-")
    assert code == 0 and out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert err.startswith("wrote standard output: study smoke, 4 trials")
    assert not Path("-").exists()


# --- the metric name, structured user attrs ------------------------------------------------------------------------


def test_hpo_run_names_the_metric_and_stores_fixed_as_a_value(smoke_study) -> None:
    study = smoke_study.load()
    assert study.metric_names == [METRIC_NAME] and metric_name(study) == METRIC_NAME
    assert isinstance(study.user_attrs["fixed"], dict)


def test_trial_config_reads_old_string_attrs_and_new_values() -> None:
    config = {"epochs": 2, "lr": 1e-3}
    for stored in (json.dumps(config), config):
        study = optuna.create_study(direction="maximize")
        study.set_user_attr("fixed", json.dumps({"epochs": 3}) if isinstance(stored, str) else {"epochs": 3})
        study.add_trial(create_trial(params={}, distributions={}, value=1.0, user_attrs={"config": stored}))
        study.add_trial(
            create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1e-1)}, value=1.0)
        )
        with_config, without = study.trials
        assert (trial_config(study, with_config).epochs, trial_config(study, with_config).lr) == (2, 1e-3)
        assert (trial_config(study, without).epochs, trial_config(study, without).lr) == (3, 0.01)
