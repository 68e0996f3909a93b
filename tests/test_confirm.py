"""Confirmation over seeds (hpo.confirm): real `hpo run` workers share it, a killed one's run is retried, the
answer (best, status, export, report) is the confirmed winner, and bad settings are one line with nothing written.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import optuna
import pytest
from conftest import SmokeStudy
from optuna.trial import TrialState
from support import assert_usage_error, cli
from test_multiworker import HpoRun, _logs

from hpo import confirm
from hpo.confirm import companion_name, summarize
from hpo.reaper import worker_of
from hpo.run import RunOptions, run_study
from hpo.storage import open_storage

STUDY = "smoke"
CONFIRM = ("--confirm-top", "3", "--confirm-seeds", "3")


def _runs_by_key(study: optuna.Study) -> dict[tuple[int, int], list[optuna.trial.FrozenTrial]]:
    runs: dict[tuple[int, int], list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        runs.setdefault((t.params["candidate"], t.params["seed"]), []).append(t)
    return runs


def _assert_each_run_finished_once(companion: optuna.Study) -> None:
    states = [t.state for t in companion.trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    for key, trials in _runs_by_key(companion).items():
        final = [
            t for t in trials if t.state == TrialState.COMPLETE or "diverged" in t.user_attrs.get("fail_reason", "")
        ]
        assert len(final) == 1, (key, [(t.number, t.state) for t in trials])
    outcome = summarize(companion)
    assert outcome.finished and outcome.winner is not None
    # Every candidate still racing at the end has all its seeds; a dropped one stops at the round it lost.
    for r in outcome.candidates:
        assert len(r.values) == (len(outcome.seeds_planned) if r.dropped_after is None else r.dropped_after)
    # Then the winner alone ran every estimate seed, which the race never used; its value is their mean.
    assert outcome.estimate_planned and not set(outcome.estimate_planned) & set(outcome.seeds_planned)
    for r in outcome.candidates:
        assert r.estimate_seeds == (outcome.estimate_planned if r is outcome.winner else [])
    assert outcome.estimate is not None and outcome.estimate.n == len(outcome.estimate_planned)
    phases = {t.params["seed"]: t.user_attrs["phase"] for t in companion.trials if t.state == TrialState.COMPLETE}
    assert {phases[s] for s in outcome.estimate_planned} == {"estimate"}
    assert {phases[s] for s in outcome.seeds_planned} == {"race"}


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_confirmation_and_a_killed_workers_run_is_retried_once(
    pg_url: str, tmp_path: Path, fast_heartbeat: dict[str, str]
) -> None:
    workers = [HpoRun(tmp_path, f"w{i}", pg_url, 4, "--set", "epochs=6", *CONFIRM) for i in range(2)]
    storage = open_storage(pg_url)
    deadline, victim_run = time.monotonic() + 300, None
    while time.monotonic() < deadline and victim_run is None:
        assert all(w.proc.poll() is None for w in workers), _logs(workers)
        try:
            companion = optuna.load_study(study_name=companion_name(STUDY), storage=storage)
        except KeyError:
            time.sleep(0.2)
            continue
        for t in companion.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "config" in t.user_attrs:  # training now
                victim_run = t
                break
        time.sleep(0.1)
    assert victim_run is not None, _logs(workers)
    (victim,) = [w for w in workers if w.pid == worker_of(victim_run)[1]]
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.proc.wait(10) == -signal.SIGKILL
    (survivor,) = [w for w in workers if w is not victim]
    assert survivor.finish() == 0, survivor.logs()

    companion = optuna.load_study(study_name=companion_name(STUDY), storage=open_storage(pg_url))
    killed = companion.trials[victim_run.number]
    assert killed.state == TrialState.FAIL  # failed by the heartbeat check
    key = (killed.params["candidate"], killed.params["seed"])
    assert any(t.state == TrialState.COMPLETE for t in _runs_by_key(companion)[key]), "the killed run was not redone"
    _assert_each_run_finished_once(companion)


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('confirm') / 'hpo.db'}"
    run_study(
        RunOptions(study=STUDY, n_trials=4, storage=url, device="cpu", confirm_top=2, confirm_seeds=2, quiet=True)
    )
    return url


def test_best_json_and_export_give_the_confirmed_winner_beside_the_raw_best(
    confirmed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "best", "--study", STUDY, "--storage", confirmed, "--json")
    best = json.loads(out)
    assert code == 0 and best["confirmed"] is True
    # Raced on seeds 1 and 2 (the trials trained with 0), then the winner's value is the mean over seeds 3 and 4,
    # which the race did not see: the race's own mean, which picked it, is beside it.
    assert best["seeds"] == [1, 2, 3, 4] and len(best["values"]) == 4 and best["value_seeds"] == [3, 4]
    assert best["value"] == pytest.approx(sum(best["values"][2:]) / 2)
    assert best["race_value"] == pytest.approx(sum(best["values"][:2]) / 2)
    assert "held back from the race" in best["note"]
    lo, hi = best["interval95"]
    assert lo < best["value"] < hi
    assert set(best["raw_best"]) == {"trial", "value"} and isinstance(best["params"], dict)
    code, out, _ = cli(capsys, "export", "--study", STUDY, "--storage", confirmed, "-o", tmp_path / "b.toml")
    assert code == 0 and "confirmed val PSNR" in (tmp_path / "b.toml").read_text()
    code, out, _ = cli(capsys, "export", "--study", STUDY, "--storage", confirmed, "-o", tmp_path / "r.toml", "--raw")
    assert code == 0 and f"trial {best['raw_best']['trial']}," in (tmp_path / "r.toml").read_text()
    assert "not confirmed" in (tmp_path / "r.toml").read_text()


def test_status_and_report_show_the_confirmation_and_the_seed_noise(
    confirmed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "status", "--storage", confirmed)
    assert code == 0 and "1 study" in out  # the companion study is shown under its search, not as a study
    assert "confirmed: trial" in out and "seed noise: sd" in out and "cannot be told apart" in out
    code, _, _ = cli(capsys, "report", "--study", STUDY, "--storage", confirmed, "-o", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert code == 0 and "Confirmation over seeds" in page and "95% interval" in page and "winner" in page


def test_a_study_without_confirmation_says_so_in_one_line(
    smoke_study: SmokeStudy, capsys: pytest.CaptureFixture[str]
) -> None:
    url = smoke_study.url
    code, out, _ = cli(capsys, "best", "--study", STUDY, "--storage", url)
    assert code == 0 and sum("not confirmed over seeds" in line for line in out.splitlines()) == 1
    best = json.loads(cli(capsys, "best", "--study", STUDY, "--storage", url, "--json")[1])
    assert best["confirmed"] is False and best["value"] == best["raw_best"]["value"] and len(best["values"]) == 1


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--confirm-top", "0"], ["top_k", ">= 1"]),
        (["--confirm-seeds", "0"], ["seeds", ">= 1"]),
        (["--confirm-estimate", "-1"], ["estimate", ">= 0"]),
        (["--confirm-estimate", "2", "--no-confirm"], ["--no-confirm", "drop one"]),
        (["--confirm-top", "2", "--no-confirm"], ["--no-confirm", "drop one"]),
    ],
)
def test_bad_confirmation_settings_are_one_line_and_create_nothing(
    flags: list[str], needles: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "hpo.db"
    code, _, err = cli(capsys, "run", "--study", STUDY, "--storage", f"sqlite:///{db}", *flags)
    assert_usage_error(code, err, *needles)
    assert not db.exists()


def test_a_spec_confirm_table_out_of_range_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(
        (Path(__file__).parent.parent / "studies" / "smoke.toml").read_text() + "\n[confirm]\nalpha = 0.7\n"
    )
    code, _, err = cli(capsys, "run", "--study", spec, "--storage", f"sqlite:///{tmp_path / 'h.db'}")
    assert_usage_error(code, err, "alpha", "[0, 0.5)")
    assert not (tmp_path / "h.db").exists()


def test_confirmation_refuses_a_changed_space(confirmed: str) -> None:
    storage = open_storage(confirmed)
    search = optuna.load_study(study_name=STUDY, storage=storage)
    from hpo.errors import SpecError
    from hpo.spec import ConfirmSettings

    with pytest.raises(SpecError, match="space .* changed"):
        confirm.start(search, storage, ConfirmSettings(enabled=True, top_k=2, seeds=2), '{"lr": "other"}')


def _fixed_runs(values: dict[tuple[int, int], float | None]) -> confirm._Runs:
    plan_seeds = [1, 2, 3]
    race_values = {c: [values[(c, s)] for s in plan_seeds if (c, s) in values] for c in range(3)}
    return confirm._Runs(race_values, set(), dict(values))


def test_the_winner_alone_runs_the_estimate_seeds_and_confirmation_waits_for_them() -> None:
    plan = {"candidates": [{}] * 3, "seeds": [1, 2, 3], "estimate_seeds": [4, 5], "alpha": 0.1, "min_seeds": 2}
    race = {(0, 1): 28.0, (0, 2): 29.0, (0, 3): 28.5, (1, 1): 28.2, (1, 2): 29.4, (1, 3): 28.8}
    race |= {(2, 1): 20.0, (2, 2): 21.0}  # far behind after two seeds: dropped
    state = confirm._replay(plan, _fixed_runs(race))
    # 2 is far behind after two seeds; 0 trails 1 on every seed by 0.2-0.4 dB, which the paired test sees at three
    assert state.decided and state.winner == 1 and state.dropped == {2: 1, 0: 2} and not state.finished
    state = confirm._replay(plan, _fixed_runs(race | {(1, 4): 27.0}))
    assert not state.finished
    state = confirm._replay(plan, _fixed_runs(race | {(1, 4): 27.0, (1, 5): 27.5, (0, 4): 40.0}))
    assert state.finished and state.winner == 1  # a stray run of a loser changes nothing


def test_a_plan_without_estimate_seeds_finishes_with_the_race() -> None:
    plan = {"candidates": [{}] * 2, "seeds": [1, 2], "alpha": 0.1, "min_seeds": 2}  # planned before estimates
    state = confirm._replay(plan, _fixed_runs({(0, 1): 28.0, (0, 2): 29.0, (1, 1): 27.0, (1, 2): 29.5}))
    assert state.decided and state.finished and state.winner == 0


def test_a_run_lost_with_its_worker_is_queued_again_as_its_retry(tmp_path: Path) -> None:
    """No retry pending (SQLite has no heartbeat retry): `advance` queues it again, naming the lost run, so the
    new run resumes from the lost one's checkpoint."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}", study_name="s.confirm", direction="maximize")
    plan = {"candidates": [{"trial": 3}], "seeds": [1, 2], "alpha": 0.1, "min_seeds": 2, "space": ""}
    study.set_user_attr(confirm.PLAN_ATTR, plan)
    dists = confirm.run_distributions(1)
    lost = optuna.trial.create_trial(
        params={"candidate": 0, "seed": 1}, distributions=dists, state=TrialState.FAIL,
        user_attrs={"fail_reason": "worker gone (heartbeat stopped)"},
    )  # fmt: skip
    study.add_trial(lost)
    assert confirm.advance(study) is False
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == {"candidate": 0, "seed": 1}
    assert queued.user_attrs["retry_of"] == 0 and queued.user_attrs["phase"] == "race"


def _companion_with(tmp_path: Path, runs: dict[tuple[int, int], float | None]) -> optuna.Study:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}", study_name="s.confirm", direction="maximize")
    plan = {"candidates": [{"trial": 3, "value": 30.0, "params": {}}, {"trial": 5, "value": 29.0, "params": {}}]}
    study.set_user_attr(confirm.PLAN_ATTR, plan | {"seeds": [1, 2], "estimate_seeds": [3, 4], "alpha": 0.1,
                                                   "min_seeds": 2, "space": ""})  # fmt: skip
    dists = confirm.run_distributions(2)
    for (c, s), v in runs.items():
        params = {"candidate": c, "seed": s}
        if v is None:
            t = optuna.trial.create_trial(params=params, distributions=dists, state=TrialState.FAIL,
                                          user_attrs={"fail_reason": "diverged at epoch 2"})  # fmt: skip
        else:
            t = optuna.trial.create_trial(params=params, distributions=dists, value=v)
        study.add_trial(t)
    return study


@pytest.mark.parametrize(
    ("estimates", "value", "value_seeds", "needle"),
    [
        ({3: 27.0, 4: 26.0}, 26.5, [3, 4], "held back from the race"),
        ({3: None, 4: 26.0}, 26.0, [4], "diverged on seed 3, so retraining it can fail"),
        ({3: None, 4: None}, 28.5, [1, 2], "diverged on every estimate seed [3, 4]"),
    ],
)
def test_a_diverged_estimate_run_is_named_and_left_out_of_the_value(
    estimates: dict[int, float | None], value: float, value_seeds: list[int], needle: str, tmp_path: Path
) -> None:
    race = {(0, 1): 28.0, (0, 2): 29.0, (1, 1): 27.0, (1, 2): 28.5}
    outcome = summarize(_companion_with(tmp_path, race | {(0, s): v for s, v in estimates.items()}))
    assert outcome.finished and outcome.winner is not None and outcome.winner.index == 0
    assert outcome.estimate is not None and outcome.estimate.mean == pytest.approx(value)
    assert outcome.value_seeds == value_seeds
    from hpo.results import confirmation_lines

    assert any(needle in line for line in confirmation_lines(outcome, None))
