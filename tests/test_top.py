"""`hpo top`: the best complete trials of a study re-evaluated with several seeds and ranked by their mean."""

import json
import math

import optuna
import pytest
import torch
from support import assert_usage_error

from hpo.cli import main
from hpo.top import format_table, reevaluate, top_trials
from model.synth import synthetic_data
from model.train import train

LRS = (1e-4, 3e-3, 1e-2)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study_url(tmp_path_factory, tiny_config):
    """A SQLite study of three trained trials (ask/tell, each with its complete config), a FAIL and a PRUNED."""
    url = f"sqlite:///{tmp_path_factory.mktemp('top') / 'hpo.db'}"
    study = optuna.create_study(storage=url, study_name="tiny", direction="maximize")
    torch.set_num_threads(1)
    for lr in LRS:
        study.enqueue_trial({"lr": lr})
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        config = tiny_config(epochs=1, seed=4, lr=trial.params["lr"])
        trial.set_user_attr("config", json.dumps(config.to_dict()))
        study.tell(trial, train(config, synthetic_data(config)).val_psnr)
    for state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED):
        trial = study.ask()
        trial.set_user_attr("config", json.dumps(tiny_config(epochs=1, seed=4).to_dict()))
        trial.report(1000.0, 0)  # a high intermediate value must not make a pruned trial "best"
        study.tell(trial, state=state)
    return url


def test_top_trials_are_the_best_complete_ones(study_url):
    study = optuna.load_study(study_name="tiny", storage=study_url)
    complete = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)
    assert [t.number for t in top_trials(study, 2)] == [t.number for t in complete[:2]]
    assert len(top_trials(study, 10)) == 3


def test_reevaluate_ranks_by_mean_over_seeds(study_url):
    study = optuna.load_study(study_name="tiny", storage=study_url)
    rows = reevaluate(study, k=2, seeds=2)
    best_two = {t.number for t in top_trials(study, 2)}
    assert {r.trial for r in rows} == best_two
    assert rows[0].mean >= rows[1].mean
    for row in rows:
        assert row.seeds == [4, 5]
        assert row.values[0] == row.original  # seed+0 repeats the trial exactly
        assert row.values[1] != row.values[0]
        assert row.std == pytest.approx(abs(row.values[0] - row.values[1]) / 2**0.5)


def test_a_diverged_seed_is_nan_and_ranks_last(study_url, monkeypatch):
    import hpo.top
    from model.errors import DivergedError

    calls = []

    def second_run_diverges(config, data, on_epoch=None):  # the best trial's second seed (best is rerun first)
        calls.append(config.seed)
        if len(calls) == 2:
            raise DivergedError(0, float("nan"))
        return train(config, data, on_epoch=on_epoch)

    monkeypatch.setattr(hpo.top, "train", second_run_diverges)
    study = optuna.load_study(study_name="tiny", storage=study_url)
    best, second = top_trials(study, 2)
    rows = reevaluate(study, k=2, seeds=2)
    assert [r.trial for r in rows] == [second.number, best.number]  # the NaN mean ranks last
    assert rows[1].values[0] == rows[1].original and math.isnan(rows[1].values[1])
    assert not any(math.isnan(v) for v in rows[0].values)
    assert math.isnan(rows[1].mean) and math.isnan(rows[1].std)
    assert format_table(rows).splitlines()[2].split()[2:4] == ["nan", "nan"]


def test_cli_prints_the_table(study_url, capsys):
    code = main(["top", "--study", "tiny", "--storage", study_url, "-k", "3", "--seeds", "1", "--epochs", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "rank" in lines[1] and "original" in lines[1]
    table = [line.split() for line in lines[2:]]
    assert [row[0] for row in table] == ["1", "2", "3"]
    means = [float(row[2]) for row in table]
    assert means == sorted(means, reverse=True)
    for row in table:  # one seed: mean = original, std = 0
        assert row[2] == row[4] and float(row[3]) == 0.0
    assert "trial" in err and "seed 4" in err  # one progress line per run


def test_unknown_study(study_url, capsys):
    code = main(["top", "--study", "nope", "--storage", study_url])
    assert_usage_error(code, capsys.readouterr().err, "unknown study 'nope'")


def test_study_without_complete_trials(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    study = optuna.create_study(storage=url, study_name="empty", direction="maximize")
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    code = main(["top", "--study", "empty", "--storage", url])
    assert_usage_error(code, capsys.readouterr().err, "no complete trial")


@pytest.mark.parametrize(("argv", "needle"), [(["-k", "0"], "-k"), (["--seeds", "0"], "--seeds")])
def test_bad_counts(study_url, capsys, argv, needle):
    code = main(["top", "--study", "tiny", "--storage", study_url, *argv])
    assert_usage_error(code, capsys.readouterr().err, needle)


def test_a_real_study_reruns_its_trials_exactly(tmp_path):
    """`hpo run` with the smoke spec stores each trial's complete config; rerun with seed+0 it repeats the value."""
    from hpo.run import RunOptions, run_study

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    run_study(RunOptions(study="smoke", n_trials=2, storage=url, sets=["device=cpu"], quiet=True))
    study = optuna.load_study(study_name="smoke", storage=url)
    rows = reevaluate(study, k=1, seeds=1)
    assert len(rows) == 1 and rows[0].trial == study.best_trial.number
    assert rows[0].values == [study.best_value]
