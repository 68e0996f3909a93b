"""`hpo data synth` and `hpo data check`: exit codes and one-line messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpo.cli import main

SMALL = ["--train-frames", "40", "--video-len", "20", "--test-videos", "1", "--height", "16", "--width", "32"]
SETS = ["--set", "train_vi_len=4", "--set", "val_vi_len=20", "--set", "frame_h=16", "--set", "frame_w=32"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, err = run(capsys, "data", "synth", "--out", str(tmp_path / "set"), "--seed", "5", *SMALL)
    assert code == 0, err
    return tmp_path / "set"


def test_synth_writes_the_set_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "data", "synth", "--out", str(tmp_path / "set"), "--seed", "5", *SMALL)
    assert code == 0 and err == ""
    assert out.strip() == (
        f"wrote {tmp_path / 'set'}: 40 train frames, 1 val video and 1 test video of 20 frames, 16x32, seed 5"
    )
    assert len(list((tmp_path / "set" / "train" / "train_img").glob("*.png"))) == 40
    assert sorted(os.listdir(tmp_path)) == ["set"]  # no temp folder left


def test_synth_writes_the_built_in_set_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpo.commands.data as data_command
    from model.config import TrainConfig
    from model.synth import builtin_set

    asked: dict[str, int] = {}
    monkeypatch.setattr(data_command, "make_synthetic", lambda out, **kw: asked.update(kw) or Path(out))
    code, out, _ = run(capsys, "data", "synth", "--out", str(tmp_path / "set"))
    assert code == 0 and asked == builtin_set(TrainConfig())  # seed 1, 640 frames, 630-frame videos, 32x64
    assert out.strip().endswith("seed 1 (the built-in set: what training uses with data empty)")


def test_synth_refuses_a_non_empty_dir(written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.relative_to(written) for p in written.rglob("*"))
    code, out, err = run(capsys, "data", "synth", "--out", str(written), *SMALL)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: output dir") and "choose a new --out" in err
    assert sorted(p.relative_to(written) for p in written.rglob("*")) == before
    assert sorted(os.listdir(written.parent)) == ["set"]


def test_synth_rejects_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "data", "synth", "--out", str(tmp_path / "x"), "--train-frames", "0")
    assert code == 2 and err.strip() == "error: synthetic train_frames must be >= 1, got 0"
    assert os.listdir(tmp_path) == []


def test_check_ok(written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "data", "check", str(written), *SETS)
    assert code == 0 and err == ""
    assert out.strip() == "OK: 40 train frames (10 clips), 20 val frames (1 video), 1 test video"


def test_check_uses_the_config_defaults_without_set(written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "data", "check", str(written))  # val_vi_len defaults to 630
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: {written.resolve() / 'val'} has 20 frame/pose pairs, fewer than one validation video "
        "(val_vi_len=630): add frames or lower it (--set val_vi_len=N)"
    ]


def test_check_prints_one_line_per_problem(written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (written / "train" / "train_label" / "frame3.png").unlink()
    (written / "val" / "val_img" / "frame2.png").write_bytes(b"garbage")
    (written / "test" / "test_label" / "0" / "frame0.png").unlink()
    (written / "test" / "test_label" / "0" / "frame1.png").unlink()
    (written / "test" / "test_img" / "1").mkdir()  # a second video without poses
    code, out, err = run(capsys, "data", "check", str(written), *SETS)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "train_img/frame3.png has no pose image" in lines[0]
    assert "test_img/1 has no poses" in lines[1]
    assert "val_img/frame2.png is not a readable image" in lines[2]


def test_check_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "data", "check", str(tmp_path / "nope"))
    assert code == 2 and out == ""
    assert (
        err.strip()
        == f'error: data dir {tmp_path / "nope"} not found: check the path (data = "" selects the synthetic set)'
    )


def test_check_bad_set_is_a_usage_error(written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "data", "check", str(written), "--set", "frame_hh=3")
    assert code == 2 and err.count("\n") == 1 and "unknown config field 'frame_hh'" in err


def test_data_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "data")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")


def test_python_m_hpo_check(written: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ok = subprocess.run(
        [sys.executable, "-m", "hpo", "data", "check", str(written), *SETS], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 40 train frames")
    (written / "train" / "train_img" / "frame7.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    bad = subprocess.run(
        [sys.executable, "-m", "hpo", "data", "check", str(written), *SETS], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and "train_img/frame7.png is not a readable image" in bad.stderr
