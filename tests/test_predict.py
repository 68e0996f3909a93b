"""`hpo predict`: the lab's submission.csv from a checkpoint alone, on a synthetic set in the lab layout."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import assert_usage_error, cli

from hpo.cli import main
from model.config import to_toml
from model.predict import write_submission
from model.retrain import run_one
from model.synth import make_synthetic, synthetic_data

SET = dict(train_frames=24, val_videos=1, val_len=6, test_videos=2, test_len=5, height=8, width=16)
D = 3 * 8 * 16

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_config):
    """A tiny synthetic set in the lab layout with two test videos of 5 poses, and a run retrained on it."""
    root = tmp_path_factory.mktemp("predict")
    data = make_synthetic(root / "lab", seed=3, **SET)
    cfg = root / "best.toml"
    cfg.write_text(to_toml(tiny_config(seed=2, data=str(data))))
    torch.set_num_threads(1)
    assert main(["retrain", str(cfg), "--out", str(root / "run"), "-q"]) == 0
    return data, root / "run"


def test_predict_writes_the_submission(lab, tmp_path, capsys):
    data, run = lab
    out = tmp_path / "pred"
    code, stdout, _ = cli(capsys, "predict", "--checkpoint", run / "best.pt", "--data", data, "--out", out)
    assert code == 0
    assert "2 videos x 5 frames" in stdout and "val PSNR" in stdout
    with open(out / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", *map(str, range(D))]
    values = np.array([[int(v) for v in row] for row in rows[1:]])
    assert values.shape == (2 * 5, 1 + D)
    assert values[:, 0].tolist() == list(range(10))
    assert values[:, 1:].min() >= 0 and values[:, 1:].max() <= 255
    # Each video starts with its given first frame, flattened (3, H, W) in C order.
    for k in range(2):
        first = np.asarray(Image.open(data / "test" / "test_img" / str(k) / "frame0.png").convert("RGB"))
        assert values[5 * k, 1:].tolist() == first.transpose(2, 0, 1).reshape(-1).tolist()
    assert len(np.unique(values[1:5, 1:], axis=0)) > 1  # predictions, not copies of one frame
    for k in range(2):
        with Image.open(out / f"test-{k}.gif") as im:
            assert im.n_frames == 5
    # Retrain wrote the same submission from the same checkpoint: prediction depends on the weights only.
    assert (out / "submission.csv").read_bytes() == (run / "submission.csv").read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_predict_without_data_uses_the_built_in_set(lab, tiny_config, tmp_path, capsys, caplog):
    config = tiny_config(seed=2, epochs=1, out=str(tmp_path / "run"))
    run_one(config, synthetic_data(config))  # trained on the built-in set; its submission from the same weights
    code, stdout, err = cli(capsys, "predict", "--checkpoint", tmp_path / "run" / "best.pt", "--out", tmp_path / "p")
    assert code == 0 and "was trained on" not in caplog.text
    assert "1 video x 6 frames" in stdout and "val PSNR" in stdout
    assert (tmp_path / "p" / "submission.csv").read_bytes() == (tmp_path / "run" / "submission.csv").read_bytes()
    # A checkpoint trained on a data folder is tried on the built-in set too, and the user is told so.
    _, run = lab
    code, _, err = cli(capsys, "predict", "--checkpoint", run / "best.pt", "--out", tmp_path / "q")
    assert code == 0 and "was trained on" in caplog.text and "pass --data" in caplog.text


def test_checkpoint_loads_with_weights_only(lab):
    _, run = lab
    state = torch.load(run / "best.pt", weights_only=True)
    assert state["config"]["f_dim"] == 8 and "model" in state


def test_write_submission_values(tmp_path):
    frames = torch.tensor([[[[0, 255]]], [[[7, 128]]]], dtype=torch.uint8)  # (2, 1, 1, 2)
    write_submission(tmp_path / "s.csv", frames)
    assert (tmp_path / "s.csv").read_text() == "id,0,1\n0,0,255\n1,7,128\n"


# --- bad input: one line on stderr, exit 2, nothing written -----------------------------------------------


def run_bad(capsys, tmp_path, checkpoint, data, *extra):
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", "--checkpoint", checkpoint, "--data", data, "--out", out, *extra)
    assert not (out / "submission.csv").exists()
    return code, err


def test_missing_checkpoint(lab, tmp_path, capsys):
    code, err = run_bad(capsys, tmp_path, tmp_path / "none.pt", lab[0])
    assert_usage_error(code, err, "not found")


def test_truncated_checkpoint(lab, tmp_path, capsys):
    blob = (lab[1] / "best.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(blob[: len(blob) // 2])
    code, err = run_bad(capsys, tmp_path, tmp_path / "half.pt", lab[0])
    assert_usage_error(code, err, "truncated")


@pytest.mark.parametrize(("field", "value"), [("f_dim", 16), ("frame_w", 64)])
def test_checkpoint_of_another_shape_names_the_field(lab, tiny_config, tmp_path, capsys, field, value):
    data, run = lab
    code, err = run_bad(capsys, tmp_path, run / "best.pt", data, "--set", f"{field}={value}")
    old = getattr(tiny_config(), field)  # what `lab` trained with
    assert_usage_error(code, err, f"{field}={old} but this run asks for {field}={value}")


def test_weights_of_another_shape(lab, tmp_path, capsys):
    state = torch.load(lab[1] / "best.pt", weights_only=True)
    state["config"]["f_dim"] = 16  # config and weights disagree
    torch.save(state, tmp_path / "odd.pt")
    code, err = run_bad(capsys, tmp_path, tmp_path / "odd.pt", lab[0])
    assert_usage_error(code, err, "another model shape")


def test_no_test_split(lab, tmp_path, capsys):
    data = tmp_path / "notest"
    shutil.copytree(lab[0], data, ignore=shutil.ignore_patterns("test", ".hpo-cache"))
    code, err = run_bad(capsys, tmp_path, lab[1] / "best.pt", data)
    assert_usage_error(code, err, "no test split")
    assert not (tmp_path / "pred").exists()


def test_video_with_a_wrong_pose_count(lab, tmp_path, capsys):
    data = tmp_path / "short"
    shutil.copytree(lab[0], data, ignore=shutil.ignore_patterns(".hpo-cache"))
    (data / "test" / "test_label" / "1" / "frame4.png").unlink()
    code, err = run_bad(capsys, tmp_path, lab[1] / "best.pt", data)
    assert_usage_error(code, err, "has 4 poses")


def test_pose_count_other_than_expected(lab, tmp_path, capsys):
    code, err = run_bad(capsys, tmp_path, lab[1] / "best.pt", lab[0], "--poses", "630")
    assert_usage_error(code, err, "5 poses each, not 630")


def test_unwritable_out(lab, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = cli(capsys, "predict", "--checkpoint", lab[1] / "best.pt", "--data", lab[0], "--out", blocker / "x")
    assert_usage_error(code, err, "cannot write", "--out")


def test_missing_data_dir(lab, tmp_path, capsys):
    code, err = run_bad(capsys, tmp_path, lab[1] / "best.pt", tmp_path / "nowhere")
    assert_usage_error(code, err, "not found")
    assert not Path(tmp_path / "pred").exists()


def test_checkpoint_from_a_gpu_machine_predicts_here(lab, tmp_path, capsys):
    state = torch.load(lab[1] / "best.pt", weights_only=True)
    state["config"]["device"] = "cuda:3"  # the training machine's device is not this one's
    torch.save(state, tmp_path / "gpu.pt")
    code, stdout, err = cli(
        capsys, "predict", "--checkpoint", tmp_path / "gpu.pt", "--data", lab[0], "--out", tmp_path / "p"
    )
    assert code == 0, err
    assert (tmp_path / "p" / "submission.csv").read_bytes() == (lab[1] / "submission.csv").read_bytes()
