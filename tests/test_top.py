"""`hpo top`: the best configs of a study confirmed over fresh seeds (hpo.confirm) and ranked by their mean."""

import json
import math
import shutil

import optuna
import pytest
import torch
from support import assert_usage_error

from hpo.cli import main
from hpo.top import format_table, top
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


@pytest.fixture
def fresh_url(study_url, tmp_path):
    """The module's study copied: `hpo top` writes its confirmation into the storage."""
    shutil.copy(study_url.removeprefix("sqlite:///"), tmp_path / "hpo.db")
    return f"sqlite:///{tmp_path / 'hpo.db'}"


def _complete(study):
    return sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)


def test_top_confirms_the_best_distinct_configs_ranked_by_mean_over_fresh_seeds(fresh_url):
    study = optuna.load_study(study_name="tiny", storage=fresh_url)
    outcome = top(study, fresh_url, k=2, seeds=2, overrides={}, quiet=True)
    assert [c.trial for c in outcome.candidates] == [t.number for t in _complete(study)[:2]]
    assert outcome.finished and outcome.seeds_planned == [5, 6]  # the trials trained with seed 4
    for c in outcome.candidates:
        assert c.seeds == [5, 6] and c.dropped_after is None  # no racing: every candidate gets every seed
        assert c.values[0] != c.values[1]
    means = [c.interval.mean for c in outcome.candidates]
    assert outcome.winner.index == means.index(max(means))
    # A run is the candidate's own config with the run's seed: training it directly gives the same value.
    first = outcome.candidates[0]
    config = tiny_config_of(study, first.trial).replace(seed=5)
    assert first.values[0] == train(config, synthetic_data(config)).val_psnr
    # Kept in the storage: `hpo best` now answers with the winner, and a second `top` trains nothing.
    again = top(optuna.load_study(study_name="tiny", storage=fresh_url), fresh_url, 2, 2, {}, True)
    assert [c.values for c in again.candidates] == [c.values for c in outcome.candidates]
    assert optuna.load_study(study_name="tiny.confirm", storage=fresh_url).trials[-1].number == 3


def tiny_config_of(study, number):
    from hpo.results import trial_config

    return trial_config(study, study.trials[number])


def test_a_diverged_seed_ranks_its_config_last(fresh_url, monkeypatch):
    import hpo.objective
    from model.errors import DivergedError

    calls = []

    def second_run_diverges(config, data, on_epoch=None, **kwargs):  # round 1: candidates 0, 1, then round 2
        calls.append(config.seed)
        if len(calls) == 3:  # candidate 0 (the best search value), seed 6
            raise DivergedError(0, float("nan"))
        return train(config, data, on_epoch=on_epoch, **kwargs)

    monkeypatch.setattr(hpo.objective, "train", second_run_diverges)
    study = optuna.load_study(study_name="tiny", storage=fresh_url)
    outcome = top(study, fresh_url, k=2, seeds=2, overrides={}, quiet=True)
    best, second = outcome.candidates
    assert best.values[1] is None and math.isinf(best.interval.mean)
    assert outcome.winner.index == second.index  # the diverged config ranks last
    table = format_table(outcome).splitlines()
    assert table[1].split()[1] == str(second.trial) and table[2].split()[2:4] == ["-inf", "nan"]


def test_overriding_a_hyperparameter_is_refused(fresh_url, capsys):
    code = main(["top", "--study", "tiny", "--storage", fresh_url, "--set", "epochs=3"])
    assert_usage_error(code, capsys.readouterr().err, "epochs", "run settings")


def test_cli_prints_the_table(fresh_url, capsys):
    code = main(["top", "--study", "tiny", "--storage", fresh_url, "-k", "3", "--seeds", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "confirm run" in out  # one line per run, then the header and the table
    assert "rank" in lines[-4] and "search" in lines[-4]
    table = [line.split() for line in lines[-3:]]
    assert [row[0] for row in table] == ["1", "2", "3"]
    means = [float(row[2]) for row in table]
    assert means == sorted(means, reverse=True)
    for row in table:  # one seed: mean = its value, sd = 0
        assert float(row[2]) == pytest.approx(float(row[5]), abs=0.005) and float(row[3]) == 0.0
    code = main(["best", "--study", "tiny", "--storage", fresh_url, "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["confirmed"] is True


def test_unknown_study(study_url, capsys):
    code = main(["top", "--study", "nope", "--storage", study_url])
    assert_usage_error(code, capsys.readouterr().err, "unknown study 'nope'")


def test_study_without_complete_trials(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    study = optuna.create_study(storage=url, study_name="empty", direction="maximize")
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    code = main(["top", "--study", "empty", "--storage", url])
    assert_usage_error(code, capsys.readouterr().err, "no complete trial")


@pytest.mark.parametrize(("argv", "needle"), [(["-k", "0"], "top_k"), (["--seeds", "0"], "seeds")])
def test_bad_counts(fresh_url, capsys, argv, needle):
    code = main(["top", "--study", "tiny", "--storage", fresh_url, *argv])
    assert_usage_error(code, capsys.readouterr().err, needle)
