"""Trial checkpoints (issue 23): a retried trial resumes its predecessor's last finished epoch and ends with the
same value bit for bit; a missing or unreadable checkpoint restarts it with a warning; the best `keep_weights`
trials keep their final weights (and only they), which `hpo predict --trial` and `hpo export --weights` use.

The retry tests drive the objective in-process for both kinds of retry (our re-queue and Optuna's heartbeat
retry); `test_killed_worker_*` kills a real `hpo run` process with SIGKILL and lets another one take the retry.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from support import assert_usage_error, cli

from hpo.confirm import run_distributions
from hpo.objective import ConfirmObjective, Objective
from hpo.spec import load_spec
from hpo.storage import open_storage
from hpo.trial_checkpoints import LINEAGE_ATTR, RESUMED_ATTR, TrialCheckpoints, kept_weights, study_checkpoints
from model.config import from_dict
from model.data import load_data
from model.synth import make_synthetic
from model.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = Path(__file__).resolve().parent.parent / "studies" / "smoke.toml"
EPOCHS = 4
PARAMS = {"lr": 0.002, "tfr": 0.5, "kl_anneal_type": "Monotonic"}


class Stop(Exception):
    """Stands for the worker's death after an epoch's checkpoint was written."""


def _objective(folder: Path, stop_after: int | None = None, epochs: list[int] | None = None) -> Objective:
    def hook_factory(trial: optuna.Trial, total: int) -> Any:
        def hook(epoch: int, metrics: dict[str, Any]) -> None:
            if epochs is not None:
                epochs.append(epoch)
            if stop_after is not None and epoch + 1 == stop_after:
                raise Stop

        return hook

    spec = load_spec(str(SMOKE))
    return Objective(spec, {"epochs": EPOCHS}, hook_factory, checkpoints=TrialCheckpoints(folder, keep=0))


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.enqueue_trial(PARAMS)
    return study


def _run(study: optuna.Study, objective: Objective) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    try:
        value = objective(trial)
    except Stop:
        return _die(study, trial)
    return study.tell(trial, value)


def _die(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    # What the worker does on SIGTERM (hpo.worker._fail_interrupted): re-queue first, then FAIL.
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
    return study.tell(trial, state=TrialState.FAIL)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> optuna.trial.FrozenTrial:
    torch.set_num_threads(1)
    return _run(_study(), _objective(tmp_path_factory.mktemp("whole")))


def _heartbeat_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    # Optuna's heartbeat retry after a worker's death: a WAITING copy of the failed trial (user attrs included).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)


@pytest.mark.parametrize("retry", ["requeue", "heartbeat"])
def test_retry_resumes_and_ends_with_the_same_value(
    retry: str, uninterrupted: optuna.trial.FrozenTrial, tmp_path: Path
) -> None:
    study = _study()
    if retry == "requeue":
        first = _run(study, _objective(tmp_path, stop_after=2))
    else:
        trial = study.ask()
        with pytest.raises(Stop):
            _objective(tmp_path, stop_after=2)(trial)
        first = study.tell(trial, state=TrialState.FAIL)
        _heartbeat_retry(study, first)
    assert first.state == TrialState.FAIL
    assert (tmp_path / "running" / f"lineage-{first.number}.pt").is_file()

    epochs: list[int] = []
    retried = _run(study, _objective(tmp_path, epochs=epochs))
    assert retried.state == TrialState.COMPLETE and retried.number == first.number + 1
    assert epochs == [2, 3]  # E - k epochs trained, not E
    assert retried.user_attrs[RESUMED_ATTR] == 2 and retried.user_attrs[LINEAGE_ATTR] == first.number
    assert retried.value == uninterrupted.value  # bit for bit on the CPU
    assert retried.intermediate_values == uninterrupted.intermediate_values  # the skipped epochs re-reported
    assert retried.user_attrs["val_psnr"] == uninterrupted.user_attrs["val_psnr"]


def test_retry_of_a_retry_finds_the_first_checkpoint(uninterrupted: optuna.trial.FrozenTrial, tmp_path: Path) -> None:
    study = _study()
    _run(study, _objective(tmp_path, stop_after=1))  # trial 0: 1 epoch, re-queued as trial 1
    second = _run(study, _objective(tmp_path, stop_after=3))  # trial 1 resumes, dies after epoch 3 (kept as 0's)
    assert second.user_attrs[RESUMED_ATTR] == 1
    third = _run(study, _objective(tmp_path))
    assert third.user_attrs[RESUMED_ATTR] == 3 and third.value == uninterrupted.value


def test_unwritable_checkpoint_folder_is_a_warning(
    uninterrupted: optuna.trial.FrozenTrial, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "running").write_text("a file where the folder goes")  # root writes anywhere: chmod would not do
    with caplog.at_level(logging.WARNING, logger="model.train"):
        trial = _run(_study(), _objective(tmp_path))
    assert trial.state == TrialState.COMPLETE and trial.value == uninterrupted.value
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]  # once, not every epoch
    assert "no checkpoint for this run's retry" in record.getMessage() and "cannot write" in record.getMessage()


class _PruneFromStep2(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return (trial.last_step or 0) >= 2


def test_resumed_trial_is_checked_for_pruning_at_its_last_skipped_epoch(tmp_path: Path) -> None:
    # The worker died after epoch 2's checkpoint, before epoch 2 was reported (the hook runs first): the retry
    # reports epochs 1 and 2 and makes the prune check that was missed.
    study = optuna.create_study(direction="maximize", pruner=_PruneFromStep2())
    study.enqueue_trial(PARAMS)
    first = _run(study, _objective(tmp_path, stop_after=2))
    assert list(first.intermediate_values) == [1]
    epochs: list[int] = []
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 2 \\(resumed\\)"):
        _objective(tmp_path, epochs=epochs)(trial)
    retried = study.tell(trial, state=TrialState.PRUNED)
    assert epochs == [] and list(retried.intermediate_values) == [1, 2]


@pytest.mark.parametrize("damage", ["missing", "truncated", "other config", "other device"])
def test_unusable_checkpoint_restarts_from_epoch_1_with_a_warning(
    damage: str, uninterrupted: optuna.trial.FrozenTrial, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = _study()
    first = _run(study, _objective(tmp_path, stop_after=2))
    path = tmp_path / "running" / f"lineage-{first.number}.pt"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        state = torch.load(path, weights_only=True)
        if damage == "other config":
            state["config"]["lr"] = 0.5
        else:  # a CUDA generator's state (16 bytes), as a GPU worker writes it
            state["rng"]["device"] = torch.zeros(16, dtype=torch.uint8)
        torch.save(state, path)
    epochs: list[int] = []
    with caplog.at_level(logging.WARNING, logger="hpo.trial_checkpoints"):
        retried = _run(study, _objective(tmp_path, epochs=epochs))
    assert retried.state == TrialState.COMPLETE and epochs == [0, 1, 2, 3]
    assert retried.user_attrs[RESUMED_ATTR] == 0 and retried.value == uninterrupted.value
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "training from epoch 1" in record.getMessage()


def test_confirmation_run_resumes_like_a_search_trial(tmp_path: Path, tiny_config: Any) -> None:
    config = tiny_config(epochs=EPOCHS).to_dict()
    candidates = [{"trial": 0, "config": config}]

    def objective(stop_after: int | None = None, epochs: list[int] | None = None) -> ConfirmObjective:
        plain = _objective(tmp_path, stop_after, epochs)
        return ConfirmObjective(candidates, {}, plain.epoch_hook_factory, checkpoints=plain.checkpoints)

    def run(study: optuna.Study, obj: ConfirmObjective) -> optuna.trial.FrozenTrial:
        trial = study.ask(dict(run_distributions(1)))
        try:
            return study.tell(trial, obj(trial))
        except Stop:
            return _die(study, trial)

    whole = optuna.create_study(direction="maximize")
    whole.enqueue_trial({"candidate": 0, "seed": 1})
    expected = run(whole, ConfirmObjective(candidates, {}))
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"candidate": 0, "seed": 1})
    assert run(study, objective(stop_after=3)).state == TrialState.FAIL
    epochs: list[int] = []
    retried = run(study, objective(epochs=epochs))
    assert retried.params == {"candidate": 0, "seed": 1} and epochs == [3]
    assert retried.user_attrs[RESUMED_ATTR] == 3 and retried.value == expected.value


def test_confirmation_keeps_no_weights(tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    url = f"sqlite:///{tmp_path}/hpo.db"
    argv = ["run", "--study", _spec(tmp_path, 1), "--n-trials", "2", "--storage", url, "--threads", "1", "-q"]
    code, _, err = cli(capsys, *argv, "--confirm-top", "1", "--confirm-seeds", "1")
    assert code == 0, err
    confirm = study_checkpoints(url, f"{STUDY}.confirm")
    assert confirm.is_dir() and not list(confirm.rglob("*.pt"))  # its runs checkpointed, then removed every file
    assert len(kept_weights(study_checkpoints(url, STUDY))) == 1


# --- kept weights, predict --trial, export --weights, through `hpo run` ---------------------------------------------

STUDY = "kw"  # the spec's study name below


def _spec(tmp: Path, keep: object) -> Path:
    text = SMOKE.read_text().replace('name = "smoke"', f'name = "{STUDY}"\nkeep_weights = {keep}')
    path = tmp / f"keep-{keep}.toml".replace('"', "")
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """A smoke study of 6 trials keeping 2 trials' weights: (storage URL, its checkpoint folder, a lab data set)."""
    from hpo.cli import main

    root = tmp_path_factory.mktemp("kept")
    url = f"sqlite:///{root}/hpo.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HPO_ARTIFACTS", raising=False)
        torch.set_num_threads(1)
        assert (
            main(["run", "--study", str(_spec(root, 2)), "--n-trials", "6", "--storage", url, "--threads", "1", "-q"])
            == 0
        )
    lab = make_synthetic(
        root / "lab", seed=3, train_frames=24, val_videos=1, val_len=6, test_videos=2, test_len=5, height=8, width=16
    )
    return url, study_checkpoints(url, STUDY), lab


def _load(url: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=open_storage(url, heartbeat=False))


def test_only_the_best_trials_keep_weights(kept: tuple[str, Path, Path]) -> None:
    url, folder, _ = kept
    study = _load(url)
    complete = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (-float(t.value or 0), t.number))
    assert len(study.trials) == 6 and len(complete) >= 2
    assert sorted(kept_weights(folder)) == sorted(t.number for t in complete[:2])
    assert not list((folder / "running").iterdir())  # every ended trial's running checkpoint is gone
    best = kept_weights(folder)[complete[0].number]
    state = torch.load(best, weights_only=True)
    assert state["epoch"] == 1 and [m["val_psnr"] for m in state["metrics"]] == list(
        complete[0].intermediate_values.values()
    )


def test_predict_trial_uses_the_kept_weights(kept: tuple[str, Path, Path], tmp_path: Path, capsys: Any) -> None:
    url, folder, lab = kept
    number = _load(url).best_trial.number
    code, out, err = cli(
        capsys, "predict", "--trial", number, "--study", STUDY, "--storage", url, "--data", lab, "--out", tmp_path / "a"
    )
    assert code == 0, err
    assert "val PSNR" in out
    code, _, err = cli(
        capsys, "predict", "--checkpoint", kept_weights(folder)[number], "--data", lab, "--out", tmp_path / "b"
    )
    assert code == 0, err
    assert (tmp_path / "a" / "submission.csv").read_bytes() == (tmp_path / "b" / "submission.csv").read_bytes()


def test_export_weights_copies_the_best_trial(kept: tuple[str, Path, Path], tmp_path: Path, capsys: Any) -> None:
    url, folder, _ = kept
    number = _load(url).best_trial.number
    dest = tmp_path / "best.pt"
    code, _, err = cli(
        capsys, "export", "--study", STUDY, "--storage", url, "-o", tmp_path / "best.toml", "--weights", dest, "--raw"
    )
    assert code == 0, err
    assert dest.read_bytes() == kept_weights(folder)[number].read_bytes()


def test_predict_unknown_trial(kept: tuple[str, Path, Path], tmp_path: Path, capsys: Any) -> None:
    url, _, lab = kept
    code, _, err = cli(capsys, "predict", "--trial", 99, "--study", STUDY, "--storage", url, "--data", lab)
    assert_usage_error(code, err, "has no trial 99", "hpo status")


def test_predict_trial_without_kept_weights(kept: tuple[str, Path, Path], tmp_path: Path, capsys: Any) -> None:
    url, folder, lab = kept
    number = next(t.number for t in _load(url).trials if t.number not in kept_weights(folder))
    code, _, err = cli(capsys, "predict", "--trial", number, "--study", STUDY, "--storage", url, "--data", lab)
    assert_usage_error(code, err, f"trial {number} of 'kw' has no kept weights", "keep_weights", "hpo retrain")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--data", "x"], "give one of --checkpoint FILE or --trial N"),
        (["--data", "x", "--checkpoint", "a.pt", "--trial", "1"], "give one of --checkpoint FILE or --trial N"),
        (["--data", "x", "--trial", "1"], "--trial 1 needs --study NAME"),
    ],
)
def test_predict_needs_one_source_of_weights(argv: list[str], needle: str, capsys: Any) -> None:
    code, _, err = cli(capsys, "predict", *argv)
    assert_usage_error(code, err, needle)


def test_export_weights_of_a_study_that_keeps_none(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    url = f"sqlite:///{tmp_path}/hpo.db"
    code, _, err = cli(capsys, "run", "--study", _spec(tmp_path, 0), "--n-trials", "1", "--storage", url, "-q")
    assert code == 0, err
    assert kept_weights(study_checkpoints(url, STUDY)) == {}
    toml = tmp_path / "best.toml"
    code, _, err = cli(capsys, "export", "--study", STUDY, "--storage", url, "-o", toml, "--weights", tmp_path / "w.pt")
    assert_usage_error(code, err, "has no kept weights")
    assert not toml.exists()  # checked before anything was written


@pytest.mark.parametrize("value", ["-1", '"3"', "true", "1.5"])
def test_bad_keep_weights(value: str, tmp_path: Path, capsys: Any) -> None:
    url = f"sqlite:///{tmp_path}/hpo.db"
    code, _, err = cli(capsys, "run", "--study", _spec(tmp_path, value), "--n-trials", "1", "--storage", url)
    assert_usage_error(code, err, "[study] keep_weights must be a whole number >= 0")
    assert not (tmp_path / "hpo.db").exists()  # refused before the storage was touched


# --- a real worker killed with SIGKILL, its trial resumed by another ------------------------------------------------

KILL_EPOCHS = 12  # about a quarter of a second each on one thread: time to kill a worker mid-trial


def _hpo_run(tmp: Path, tag: str, url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HPO_ARTIFACTS": str(tmp / "artifacts")}
    env.pop("HPO_STORAGE", None)
    cmd = [sys.executable, "-m", "hpo", "run", "--study", "smoke", "--n-trials", "1", "--storage", url]
    cmd += ["--set", f"epochs={KILL_EPOCHS}", "--threads", "1", "-q"]
    with (tmp / f"{tag}.out").open("w") as out, (tmp / f"{tag}.err").open("w") as err:
        return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=err)


def _wait_epochs(url: str, proc: subprocess.Popen[bytes], at_least: int, tmp: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            trials = optuna.load_study(study_name="smoke", storage=open_storage(url, heartbeat=False)).trials
        except KeyError:
            trials = []
        if trials and len(trials[0].intermediate_values) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"trial 0 did not reach epoch {at_least}: {(tmp / 'w0.err').read_text()[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "signum"),
    [
        pytest.param("journal", signal.SIGKILL, id="journal-kill"),  # the reaper's re-queue (retry_of)
        pytest.param("postgres", signal.SIGKILL, marks=pytest.mark.postgres, id="postgres-kill"),  # Optuna's retry
        pytest.param("journal", signal.SIGTERM, id="journal-term"),  # the worker's own re-queue
    ],
)
def test_killed_worker_trial_resumes_in_another_worker(
    kind: str, signum: int, tmp_path: Path, request: pytest.FixtureRequest, fast_heartbeat: dict[str, str]
) -> None:
    url = str(request.getfixturevalue("pg_url")) if kind == "postgres" else f"journal:///{tmp_path / 'hpo.log'}"
    victim = _hpo_run(tmp_path, "w0", url)
    _wait_epochs(url, victim, 3, tmp_path)
    victim.send_signal(signum)
    assert victim.wait(30) == (-signal.SIGKILL if signum == signal.SIGKILL else 143)
    survivor = _hpo_run(tmp_path, "w1", url)
    assert survivor.wait(300) == 0, (tmp_path / "w1.err").read_text()[-3000:]

    study = optuna.load_study(study_name="smoke", storage=open_storage(url, heartbeat=False))
    killed, retry = study.trials
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    done = retry.user_attrs[RESUMED_ATTR]
    assert done >= 3 and retry.user_attrs[LINEAGE_ATTR] == 0
    # The same value as the config trained in one go, here, on the same device and thread count.
    recorded = retry.user_attrs["config"]
    config = from_dict(recorded if isinstance(recorded, dict) else json.loads(recorded))
    whole = train(config, load_data(config))
    assert retry.value == whole.val_psnr
    assert [retry.intermediate_values[e + 1] for e in range(KILL_EPOCHS)] == [m["val_psnr"] for m in whole.history]
    assert not list((tmp_path / "artifacts" / "trial-checkpoints" / "smoke" / "running").iterdir())


def test_a_worker_stopping_removes_the_checkpoints_no_retry_will_resume(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    store = TrialCheckpoints(tmp_path / "ck", keep=1)
    (tmp_path / "ck" / "running").mkdir(parents=True)
    dead = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={LINEAGE_ATTR: 0})  # retries ran out
    retried = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={LINEAGE_ATTR: 1})
    for t in (dead, retried):
        study.add_trial(t)
        store.running(t.user_attrs[LINEAGE_ATTR]).write_bytes(b"x")
    study.enqueue_trial({}, user_attrs={"retry_of": 1})  # trial 2 will resume lineage 1
    running = study.ask()  # trial 2 itself, claimed; then a fresh trial 3 that has written its first epoch
    assert running.number == 2
    fresh = study.ask()
    fresh.set_user_attr(LINEAGE_ATTR, fresh.number)
    store.running(fresh.number).write_bytes(b"x")
    assert store.sweep(study) == 1
    assert sorted(p.name for p in (tmp_path / "ck" / "running").iterdir()) == ["lineage-1.pt", "lineage-3.pt"]
