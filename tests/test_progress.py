"""Progress within an epoch and within a prediction (hpo/progress.py): bars over steps with an ETA, silent with -q.

That progress changes no result is held at the trainer (tests/test_train.py, on_step); here, what a person sees.
"""

from __future__ import annotations

import pytest
from support import cli

from hpo.progress import CountBar, EpochBar
from model.config import to_toml

pytestmark = pytest.mark.usefixtures("one_thread")

METRICS = {"epoch": 0, "train_loss": 0.5, "beta": 0.0, "tfr": 1.0, "val_psnr": 20.0, "seconds": 1.0}


def test_epoch_bar_counts_steps_once_the_trainer_reports_them(capsys):
    bar = EpochBar(4, "run", done=1)  # a resumed run: one epoch of four already done
    assert (bar.bar.unit, bar.bar.n, bar.bar.total) == ("ep", 1, 4)
    for step in (1, 2, 3):
        bar.on_step(step, 3)
    assert (bar.bar.unit, bar.bar.n, bar.bar.total) == ("step", 6, 12)
    bar(1, {**METRICS, "epoch": 1})
    assert bar.bar.n == 6 and bar.bar.postfix.startswith("epoch=2/4")
    bar.on_step(1, 3)
    assert bar.bar.n == 7
    bar.close()
    # Without step reports (a study's trials) the bar counts epochs, as before.
    trial = EpochBar(2, "trial 0")
    trial(0, METRICS)
    assert (trial.bar.unit, trial.bar.n) == ("ep", 1)
    trial.close()
    err = capsys.readouterr().err
    assert "step" in err and "/12" in err


def test_count_bar_is_sized_by_its_first_report(capsys):
    bar = CountBar("predict", "frame")
    for done in range(1, 11):
        bar(done, 10)
    assert (bar.bar.n, bar.bar.total) == (10, 10)
    bar.close()
    quiet = CountBar("predict", "frame", quiet=True)
    quiet(1, 10)
    quiet.close()
    assert "frame" in capsys.readouterr().err


@pytest.fixture
def cfg(tmp_path, tiny_config):
    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(tiny_config(seed=4)))  # 6 clips at batch 2: 3 steps an epoch, 2 epochs
    return path


def test_train_shows_steps_and_q_keeps_it_quiet(cfg, tmp_path, capsys):
    code, out, err = cli(capsys, "train", cfg, "--set", f"out={tmp_path / 'loud'}")
    assert code == 0
    assert "/6 " in err and "step" in err  # a bar over the run's 6 steps
    assert "epoch 1/2" in out and "epoch 2/2" in out
    code, out, err = cli(capsys, "train", cfg, "--set", f"out={tmp_path / 'quiet'}", "-q")
    assert code == 0 and err == ""
    assert len(out.strip().splitlines()) == 1 and out.startswith("val PSNR")


def test_retrain_and_predict_show_progress_and_q_keeps_them_quiet(cfg, tmp_path, capsys):
    code, _, err = cli(capsys, "retrain", cfg, "--out", tmp_path / "run")
    assert code == 0 and "/6 " in err and "step" in err
    code, _, err = cli(capsys, "retrain", cfg, "--out", tmp_path / "quiet", "-q")
    assert code == 0 and err == ""
    # Predict on the built-in set (no --data): one test video of 6 poses and one val video of 6 frames.
    code, out, err = cli(capsys, "predict", "--checkpoint", tmp_path / "run" / "best.pt", "--out", tmp_path / "p")
    assert code == 0 and "/10 " in err and "frame" in err
    code, out, err = cli(capsys, "predict", "--checkpoint", tmp_path / "run" / "best.pt", "--out", tmp_path / "q", "-q")
    assert code == 0 and err == "" and out.startswith("wrote")


def test_a_trial_line_starts_with_the_studys_progress_of_its_budget(capsys, tmp_path):
    import optuna

    from hpo.progress import TrialPrinter

    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'p.db'}")
    printer = TrialPrinter(study, budget=12)
    for value in (1.0, 2.0):  # another worker's trial finished first: the count is the study's
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))
    printer.trial_finished(study, study.trials[-1])
    assert capsys.readouterr().out.startswith("[ 2/12] trial   1 COMPLETE")
    TrialPrinter(study).trial_finished(study, study.trials[-1])  # no budget (confirmation runs): no count
    assert capsys.readouterr().out.startswith("trial   1 COMPLETE")


def test_a_resumed_trials_bar_starts_at_its_resumed_epoch():
    bar = EpochBar(8, "trial 3")
    bar.resumed(5)
    assert (bar.bar.n, bar.bar.total) == (5, 8)
    bar.on_step(1, 4)  # the trainer's first step after the resume: the bar counts steps from epoch 5
    assert (bar.bar.n, bar.bar.total) == (21, 32)
    bar.close()
