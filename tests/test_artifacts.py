"""Trial artifacts: where the store lives, what each finished trial gets, the export on the study.

See docs/ARCHITECTURE.md, "Outputs".
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.artifacts import download_artifact, get_all_artifact_meta
from optuna.trial import TrialState
from PIL import Image

from hpo.artifacts import ARTIFACTS_ENV, PSNR_ATTR, artifact_store_for, artifacts_dir, upload_trial_artifacts
from hpo.storage import open_storage
from model.data import load_data
from model.media import STRIP_COLUMNS, frame_strip_png, psnr_plot_png
from model.train import train


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)


@pytest.fixture(scope="module")
def tiny(tiny_config):
    """A tiny config, its synthetic data and a model trained one epoch on it (a second on the CPU)."""
    config = tiny_config(epochs=1, val_vi_len=10, seed=0)  # the smoke spec's fixed fields, as trials get them
    data = load_data(config)
    return config, data, train(config, data)


def test_artifacts_dir_follows_the_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert artifacts_dir("sqlite:///hpo.db") == tmp_path / "hpo-artifacts"
    assert artifacts_dir("sqlite:///sub/x.db") == tmp_path / "sub" / "x-artifacts"
    assert artifacts_dir(f"sqlite:///{tmp_path}/a/b.db") == tmp_path / "a" / "b-artifacts"
    assert artifacts_dir("journal:///runs/j.log") == tmp_path / "runs" / "j-artifacts"
    assert artifacts_dir("postgresql+psycopg://u:pw@db:5432/hpo") == tmp_path / "hpo-artifacts"
    assert artifacts_dir("sqlite:///:memory:") == tmp_path / "hpo-artifacts"
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path / "shared"))
    assert artifacts_dir("sqlite:///hpo.db") == tmp_path / "shared"
    artifact_store_for("sqlite:///hpo.db")
    assert (tmp_path / "shared").is_dir()


def test_upload_attaches_two_pngs_and_the_per_frame_psnr(tmp_path: Path, tiny) -> None:
    config, data, result = tiny
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), direction="maximize")
    trial = study.ask()
    ids = upload_trial_artifacts(url, trial, config, data, result)
    study.tell(trial, result.val_psnr)

    frozen = study.trials[0]
    metas = {m.filename: m for m in get_all_artifact_meta(frozen, storage=study._storage)}
    assert sorted(metas) == ["trial-0-frames.png", "trial-0-psnr-per-frame.png"]
    assert sorted(ids) == sorted(m.artifact_id for m in metas.values())
    assert all(m.mimetype == "image/png" for m in metas.values())
    store = artifact_store_for(url)
    for name, meta in metas.items():
        out = tmp_path / f"dl-{name}"
        download_artifact(artifact_store=store, file_path=str(out), artifact_id=meta.artifact_id)
        with Image.open(out) as img:
            assert img.format == "PNG" and img.width > 100 and img.height >= 64
    assert (tmp_path / "s-artifacts").is_dir()
    # The final evaluation is deterministic (prior draws seeded by config.seed): same curve as the last epoch's.
    curve = frozen.user_attrs[PSNR_ATTR]
    assert len(curve) == config.val_vi_len - 1
    np.testing.assert_allclose(curve, result.psnr_per_frame.mean(axis=0), atol=1e-3)


def test_unwritable_store_keeps_the_trial(tmp_path: Path, tiny, monkeypatch, caplog) -> None:
    config, data, result = tiny
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv(ARTIFACTS_ENV, str(blocker / "sub"))
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    with caplog.at_level(logging.WARNING, logger="hpo.artifacts"):
        assert upload_trial_artifacts("sqlite:///x.db", trial, config, data, result) == []
    study.tell(trial, result.val_psnr)
    assert "artifacts not saved" in caplog.text and ARTIFACTS_ENV in caplog.text
    assert study.trials[0].state == TrialState.COMPLETE
    assert len(study.trials[0].user_attrs[PSNR_ATTR]) == config.val_vi_len - 1


def test_frame_strip_shows_every_nth_frame_true_above_predicted() -> None:
    t, h, w = 20, 8, 16
    truth = torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8)
    preds = torch.rand(t, 3, h, w)
    img = np.asarray(frame_strip_png(truth, preds))
    step = -(-t // STRIP_COLUMNS)  # ceil
    picks = list(range(0, t, step))
    scale = 64 // h
    label_w, head_h, gap = 44, 16, 2
    assert img.shape[1] == label_w + len(picks) * (w * scale + gap)
    for col, i in enumerate(picks):
        x0 = label_w + col * (w * scale + gap)
        top = img[head_h : head_h + h * scale : scale, x0 : x0 + w * scale : scale]  # nearest upscale: subsample
        np.testing.assert_array_equal(top, truth[i].permute(1, 2, 0).numpy())
        y1 = head_h + h * scale + gap
        bottom = img[y1 : y1 + h * scale : scale, x0 : x0 + w * scale : scale]
        expect = (preds[i].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(bottom, expect)


def test_psnr_plot_draws_each_video_and_the_mean() -> None:
    per_frame = np.stack([np.linspace(20, 30, 50), np.linspace(25, 15, 50)])
    img = psnr_plot_png(per_frame, "t")
    assert img.size == (640, 300)
    pixels = np.asarray(img).reshape(-1, 3)
    blue, light = (31, 119, 180), (158, 202, 225)
    assert (pixels == blue).all(axis=1).sum() > 100  # the mean, 2 px wide
    assert (pixels == light).all(axis=1).sum() > 100  # one light line per video
    single = np.asarray(psnr_plot_png(per_frame[:1], "t")).reshape(-1, 3)
    assert (single == light).all(axis=1).sum() == 0  # one video: only the mean


def test_run_study_attaches_artifacts_to_every_complete_trial(smoke_study) -> None:
    folder, study = smoke_study.folder, smoke_study.load()
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    for t in study.trials:
        names = sorted(m.filename for m in get_all_artifact_meta(t, storage=study._storage))
        if t.state == TrialState.COMPLETE:
            assert names == [f"trial-{t.number}-frames.png", f"trial-{t.number}-psnr-per-frame.png"]
            assert len(t.user_attrs[PSNR_ATTR]) == 5  # smoke: val_vi_len 6
        else:  # pruned before training ended: nothing to picture
            assert names == []
    stored = {p.name for p in (folder / "hpo-artifacts").iterdir() if p.is_file()}  # not trial-checkpoints/
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(stored) == 2 * len(complete)


def test_export_attaches_the_toml_to_the_study(smoke_study, tmp_path: Path) -> None:
    from hpo.commands import export

    run = smoke_study.copy(tmp_path / "study")  # the export attaches a file to the study
    url, study = run.url, run.load()
    out = tmp_path / "best.toml"
    assert export.run(argparse.Namespace(study="smoke", storage=url, output=str(out), raw=False, weights=None)) == 0
    metas = [m for m in get_all_artifact_meta(study) if m.filename.startswith("best-config-trial-")]
    assert len(metas) == 1 and metas[0].mimetype == "application/toml"
    copy = tmp_path / "copy.toml"
    download_artifact(artifact_store=artifact_store_for(url), file_path=str(copy), artifact_id=metas[0].artifact_id)
    assert copy.read_text() == out.read_text()
