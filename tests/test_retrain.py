"""`hpo retrain`: outputs, best-K checkpoints, exact resume after a crash or a SIGKILL, seeds, bad input."""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from support import assert_usage_error, cli

from model.checkpoint import load_checkpoint
from model.config import to_toml
from model.retrain import retrain, retrain_config, run_one
from model.synth import synthetic_data

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(tiny_config):
    """`tiny(**overrides)`: conftest's tiny config, 3 epochs, seed 5."""
    return functools.partial(tiny_config, epochs=3, seed=5)


@pytest.fixture
def cfg(tmp_path, tiny):
    """A complete exported-style TOML of the tiny config."""
    path = tmp_path / "best.toml"
    path.write_text(to_toml(tiny(), "vp-hpo export: test"))
    return str(path)


def epochs_of(out):
    """metrics.json's per-epoch rows without the wall-clock times."""
    rows = json.loads((Path(out) / "metrics.json").read_text())["epochs"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def same_weights(a, b):
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_retrain_writes_every_output(cfg, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = cli(capsys, "retrain", cfg, "--out", out, "--set", "finetune_epochs=2", "--epochs", "2", "-q")
    assert code == 0
    assert "main: 2 epochs" in stdout and "finetune: 2 epochs" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["stage"] for m in metrics["epochs"]] == ["main", "main", "finetune", "finetune"]
    for row in metrics["epochs"]:
        assert {"train_loss", "beta", "tfr", "val_psnr"} <= row.keys()
    # Epochs count from 1 in every file a person reads, as on the console.
    assert [m["epoch"] for m in metrics["epochs"]] == [1, 2, 3, 4]
    assert metrics["stages"]["main"]["epochs"] == 2 and metrics["stages"]["finetune"]["first_epoch"] == 3
    assert metrics["stages"]["finetune"]["last_epoch"] == 4
    assert metrics["final_val_psnr"] == metrics["epochs"][-1]["val_psnr"]
    assert metrics["best_val_psnr"] == max(m["val_psnr"] for m in metrics["epochs"])
    assert metrics["config"]["epochs"] == 2  # --epochs took effect
    # Best-K: best.pt is the best epoch, best-eNNNN.pt the three best epochs, last.pt the last.
    ranked = sorted(metrics["epochs"], key=lambda m: -m["val_psnr"])[:3]
    assert sorted(p.name for p in out.glob("best-e*.pt")) == sorted(f"best-e{m['epoch']:04d}.pt" for m in ranked)
    assert f"at epoch {metrics['stages']['main']['best_epoch']})" in stdout
    # A checkpoint's own `epoch` is the trainer's 0-based index, what a resumed run continues after.
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] + 1 == metrics["best_epoch"]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3
    assert same_weights(out / "best.pt", out / f"best-e{metrics['best_epoch']:04d}.pt")
    # Pictures and the submission (the synthetic set has a one-video test split of val_vi_len poses).
    with Image.open(out / "psnr_per_frame.png") as im:
        assert im.format == "PNG"
    with Image.open(out / "val.gif") as im:
        assert im.n_frames == tiny().val_vi_len - 1
    lines = (out / "submission.csv").read_text().splitlines()
    assert lines[0] == ",".join(["id", *map(str, range(3 * 8 * 16))])
    assert len(lines) == 1 + tiny().val_vi_len
    assert (out / "test-0.gif").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_resume_renumbers_the_best_files_of_a_run_written_before_epochs_counted_from_1(tiny, tmp_path):
    config = tiny(out=str(tmp_path / "old"), keep_best=3, epochs=4)
    data = synthetic_data(config)

    class Crash(Exception):
        pass

    def crash_after_3(_config, _done):
        def hook(epoch, _metrics):
            if epoch == 2:
                raise Crash

        return hook

    with pytest.raises(Crash):
        run_one(config, data, hook_factory=crash_after_3)
    out = tmp_path / "old"
    # Turn it into what the previous version wrote: best-eNNNN.pt and metrics.json counted from 0.
    for path in sorted(out.glob("best-e*.pt")):
        path.rename(out / f"best-e{int(path.stem[6:]) - 1:04d}.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["epochs"] = [{**m, "epoch": m["epoch"] - 1} for m in metrics["epochs"]]
    (out / "metrics.json").write_text(json.dumps(metrics))
    old_names = sorted(p.name for p in out.glob("best-e*.pt"))
    assert old_names == ["best-e0000.pt", "best-e0001.pt", "best-e0002.pt"]
    run_one(config, data, resume=True)
    fresh = tiny(out=str(tmp_path / "fresh"), keep_best=3, epochs=4)
    run_one(fresh, data)
    assert sorted(p.name for p in out.glob("best-e*.pt")) == sorted(
        p.name for p in (tmp_path / "fresh").glob("best-e*.pt")
    )
    for path in (tmp_path / "fresh").glob("best-e*.pt"):
        assert same_weights(path, out / path.name)
    assert epochs_of(out) == epochs_of(tmp_path / "fresh")


def test_keep_best_prunes_to_k(tiny, tmp_path):
    config = tiny(out=str(tmp_path / "k1"), keep_best=1)
    run_one(config, synthetic_data(config))
    kept = list((tmp_path / "k1").glob("best-e*.pt"))
    assert len(kept) == 1 and same_weights(kept[0], tmp_path / "k1" / "best.pt")


def test_resume_after_a_crash_equals_uninterrupted(tiny, tmp_path):
    config = tiny(out=str(tmp_path / "full"), finetune_epochs=2)
    data = synthetic_data(config)
    run_one(config, data)

    class Crash(Exception):
        pass

    def crash_after(k):
        def factory(_config, _done):
            def hook(epoch, _metrics):
                if epoch == k:
                    raise Crash

            return hook

        return factory

    part = config.replace(out=str(tmp_path / "part"))
    with pytest.raises(Crash):
        run_one(part, data, hook_factory=crash_after(1))  # killed in the main stage
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    with pytest.raises(Crash):
        run_one(part, data, resume=True, hook_factory=crash_after(3))  # and again in the fine-tune stage
    report = run_one(part, data, resume=True)
    assert report.resumed_from == 4  # after epoch 4 (of 5), counted as people count
    assert epochs_of(tmp_path / "part") == epochs_of(tmp_path / "full")
    for name in ("last.pt", "best.pt"):
        assert same_weights(tmp_path / "part" / name, tmp_path / "full" / name)
    assert (tmp_path / "part" / "submission.csv").read_bytes() == (tmp_path / "full" / "submission.csv").read_bytes()


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(cfg, tmp_path):
    """A real process killed with SIGKILL right after an epoch's checkpoint, then `--resume`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # every process computes with the same thread count
    sets = ["--set", "epochs=12", "-q"]

    def hpo(*argv):
        return [sys.executable, "-m", "hpo", "retrain", cfg, *map(str, argv), *sets]

    subprocess.run(hpo("--out", tmp_path / "full"), env=env, cwd=REPO, check=True, capture_output=True)
    part = tmp_path / "part"
    proc = subprocess.Popen(hpo("--out", part), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (part / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(part / "last.pt")["epoch"]
    assert killed_at < 11, "the run finished before it was killed"
    done = subprocess.run(hpo("--out", part, "--resume"), env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resumed after epoch {killed_at + 1}" in done.stdout  # the checkpoint's 0-based index, + 1
    assert epochs_of(part) == epochs_of(tmp_path / "full")
    assert same_weights(part / "last.pt", tmp_path / "full" / "last.pt")
    assert same_weights(part / "best.pt", tmp_path / "full" / "best.pt")


def test_seeds_report_each_run_and_the_spread(cfg, tmp_path, capsys):
    out = tmp_path / "seeds"
    code, stdout, _ = cli(capsys, "retrain", cfg, "--out", out, "--seeds", "2", "--set", "epochs=1", "-q")
    assert code == 0
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [5, 6]
    values = [json.loads((out / f"seed-{s}" / "metrics.json").read_text())["final_val_psnr"] for s in (5, 6)]
    assert summary["final_val_psnr"] == values
    assert values[0] != values[1]  # different seeds, different runs
    assert summary["mean"] == pytest.approx(sum(values) / 2)
    assert summary["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert "seed 5:" in stdout and "seed 6:" in stdout
    assert f"{summary['mean']:.2f} ± {summary['std']:.2f} dB" in stdout


def test_retrain_config_out_and_epochs(cfg):
    assert retrain_config(cfg, []).out == "runs/retrain"
    assert retrain_config(cfg, ["out=elsewhere"]).out == "elsewhere"
    config = retrain_config(cfg, ["out=elsewhere"], epochs=7, out="flag")
    assert (config.out, config.epochs) == ("flag", 7)


# --- bad input: one line on stderr, exit 2, nothing half-written ------------------------------------------


def test_existing_run_without_resume_is_refused(cfg, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(capsys, "retrain", cfg, "--out", out, "--set", "epochs=1", "-q")[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = cli(capsys, "retrain", cfg, "--out", out, "--set", "epochs=1")
    assert_usage_error(code, err, "already holds a run", "--resume")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_seeds_refuse_before_training_any(cfg, tmp_path, capsys):
    out = tmp_path / "seeds"
    assert cli(capsys, "retrain", cfg, "--out", out / "seed-6", "--set", "epochs=1", "--set", "seed=6", "-q")[0] == 0
    code, _, err = cli(capsys, "retrain", cfg, "--out", out, "--seeds", "2", "--set", "epochs=1")
    assert_usage_error(code, err, "seed-6", "--resume")
    assert not (out / "seed-5").exists()


@pytest.mark.parametrize(
    ("first", "second", "needle"),
    [
        (["f_dim=8"], ["f_dim=16"], "f_dim=8 but this run asks for f_dim=16"),
        (["frame_h=8"], ["frame_h=16"], "frame_h=8 but this run asks for frame_h=16"),
        (["epochs=1"], ["epochs=2"], "epochs=1 but this run asks for epochs=2"),
    ],
)
def test_resume_from_another_config_names_the_field(cfg, tmp_path, capsys, first, second, needle):
    out = tmp_path / "run"
    assert cli(capsys, "retrain", cfg, "--out", out, "--set", "epochs=1", *[f"--set={s}" for s in first], "-q")[0] == 0
    last = (out / "last.pt").read_bytes()
    sets = [f"--set={s}" for s in ["epochs=1", *second]]
    code, _, err = cli(capsys, "retrain", cfg, "--out", out, "--resume", *sets)
    assert_usage_error(code, err, needle, "new --out")
    assert (out / "last.pt").read_bytes() == last


def test_resume_from_a_truncated_checkpoint(cfg, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(capsys, "retrain", cfg, "--out", out, "--set", "epochs=1", "-q")[0] == 0
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    code, _, err = cli(capsys, "retrain", cfg, "--out", out, "--resume", "--set", "epochs=1")
    assert_usage_error(code, err, "truncated")


def test_resume_without_checkpoint_starts_fresh(tiny, tmp_path):
    config = tiny(epochs=1, out=str(tmp_path / "fresh"))
    report = retrain(config, resume=True)
    assert report.runs[0].resumed_from is None and (tmp_path / "fresh" / "last.pt").is_file()


def test_unwritable_out(cfg, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = cli(capsys, "retrain", cfg, "--out", blocker / "run", "--set", "epochs=1")
    assert_usage_error(code, err, "cannot write", "--out")


@pytest.mark.parametrize(("argv", "needle"), [(["--seeds", "0"], "--seeds"), (["--epochs", "0"], "--epochs")])
def test_bad_counts(cfg, tmp_path, capsys, argv, needle):
    code, _, err = cli(capsys, "retrain", cfg, "--out", tmp_path / "run", *argv)
    assert_usage_error(code, err, needle)
    assert not (tmp_path / "run").exists()


def test_missing_data_writes_nothing(cfg, tmp_path, capsys):
    code, _, err = cli(capsys, "retrain", cfg, "--out", tmp_path / "run", "--set", f"data={tmp_path / 'nope'}")
    assert_usage_error(code, err, "not found")
    assert not (tmp_path / "run").exists()
