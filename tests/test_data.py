"""Lab-layout loading, the decode cache and the synthetic renderer (model/data.py, datacache.py, synth.py)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import model.datacache as datacache
import model.synth as synth
from model.config import TrainConfig
from model.data import check_data, frame_key, load_data, summary
from model.errors import DataError
from model.synth import make_synthetic, synthetic_data

TINY = dict(train_frames=40, val_len=20, test_videos=2, test_len=20, height=16, width=32)


def cfg(data: Path | str = "", **kw) -> TrainConfig:
    base = dict(data=str(data), train_vi_len=4, val_vi_len=20, frame_h=16, frame_w=32, synth_train_frames=40)
    return TrainConfig(**{**base, **kw}).validate()


def write_png(path: Path, value: int, size: tuple[int, int] = (16, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def write_split(root: Path, split: str, numbers: list[int]) -> None:
    """Frame N is a flat image of value N, its pose of value 100 + N."""
    for n in numbers:
        write_png(root / split / f"{split}_img" / f"frame{n}.png", n)
        write_png(root / split / f"{split}_label" / f"frame{n}.png", 100 + n)


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    root = tmp_path / "lab"
    write_split(root, "train", [10, 2, 1, 0, 3, 4, 5, 6, 7, 8, 9, 11])
    write_split(root, "val", list(range(20)))
    return root


@pytest.fixture
def synth_set(tmp_path: Path) -> Path:
    return make_synthetic(tmp_path / "synth", seed=1, **TINY)


def files_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))
    }


# --- layout ---------------------------------------------------------------------------------------------


def test_frame_key_sorts_by_number_not_text() -> None:
    names = ["frame10.png", "frame2.png", "frame1.png", "notes.png", "frame0.png"]
    assert sorted(names, key=frame_key) == ["frame0.png", "frame1.png", "frame2.png", "frame10.png", "notes.png"]


def test_lab_layout_numeric_order_and_pairs(lab: Path) -> None:
    data = load_data(cfg(lab))
    frames = data.train.frames[:, :, 0, 0, 0].flatten().tolist()
    poses = data.train.poses[:, :, 0, 0, 0].flatten().tolist()
    assert frames == list(range(12))  # frame2 before frame10, pairs kept together
    assert poses == [100 + n for n in range(12)]
    assert data.train.frames.shape == (3, 4, 3, 16, 32)
    assert data.val.frames.shape == (1, 20, 3, 16, 32)
    assert data.test_first is None and data.test_poses is None and data.test_ids == []
    assert data.source == str(lab.resolve())
    assert summary(lab, cfg(lab)) == "12 train frames (3 clips), 20 val frames (1 video), 0 test videos"


def test_trailing_frames_dropped_and_resized(lab: Path) -> None:
    data = load_data(cfg(lab, train_vi_len=5, frame_h=8, frame_w=12))
    assert data.train.frames.shape == (2, 5, 3, 8, 12)  # 12 frames -> 2 clips of 5, 2 unused
    assert data.train.frames.dtype == torch.uint8
    assert data.train.frames[1, 4, 0].eq(9).all()  # flat images stay flat after resize


def lab_resize(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The lab pipeline's frame: torchvision's default_loader (PIL, convert("RGB")), then transforms.Resize((H, W)),
    which on a PIL image is torchvision's `img.resize((W, H), BILINEAR)` (torchvision is not installed beside our
    torch, so its one PIL call is written out here)."""
    with open(path, "rb") as f:
        img = PIL.Image.open(f).convert("RGB")
    return np.asarray(img.resize((size[1], size[0]), PIL.Image.Resampling.BILINEAR)).transpose(2, 0, 1)


@pytest.mark.parametrize(("source", "mode"), [((240, 320), "RGB"), ((720, 1280), "RGB"), ((480, 640), "P")])
def test_frames_are_resized_as_the_lab_pipeline_resizes(tmp_path: Path, source: tuple[int, int], mode: str) -> None:
    rng = np.random.default_rng(0)
    h, w = source
    coarse = PIL.Image.fromarray((rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8))
    img = coarse.resize((w, h), PIL.Image.Resampling.BICUBIC)  # smooth detail, like a photo
    path = tmp_path / "frame0.png"
    (img if mode == "RGB" else img.quantize(64)).save(path)
    ours = datacache.decode_image(path, (32, 64))
    assert ours.shape == (3, 32, 64) and ours.dtype == np.uint8
    assert np.array_equal(ours, lab_resize(path, (32, 64)))
    # What the cache held before (a reducing gap) differs at these downscales: the test tells the two apart.
    with PIL.Image.open(path) as im:
        gap = im.convert("RGB").resize((64, 32), PIL.Image.Resampling.BILINEAR, reducing_gap=3.0)
    assert not np.array_equal(ours, np.asarray(gap).transpose(2, 0, 1))


def test_img_without_label_and_label_without_img_are_named(lab: Path) -> None:
    (lab / "train" / "train_label" / "frame3.png").unlink()
    (lab / "val" / "val_img" / "frame7.png").unlink()
    problems = check_data(lab, cfg(lab))
    assert any("train_img/frame3.png has no pose image" in p and "train_label/frame3.png" in p for p in problems)
    assert any("val_label/frame7.png has no frame" in p for p in problems)
    with pytest.raises(DataError, match=r"train_img/frame3\.png has no pose image.*more problems"):
        load_data(cfg(lab))


def test_many_unpaired_files_are_capped(lab: Path) -> None:
    for n in range(12):
        (lab / "train" / "train_label" / f"frame{n}.png").unlink()
    problems = check_data(lab, cfg(lab))
    unpaired = [p for p in problems if "has no pose image" in p]
    assert len(unpaired) == 5 and any(p.startswith("... and 7 more") for p in problems)


@pytest.mark.parametrize("content", [b"not a png at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00"])
def test_corrupt_png_is_named(lab: Path, content: bytes) -> None:
    bad = lab / "train" / "train_img" / "frame5.png"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=r"frame5\.png is not a readable image"):
        load_data(cfg(lab))
    assert not list((lab / ".hpo-cache").glob("train-*.npy*"))  # a broken split is not cached
    problems = check_data(lab, cfg(lab))
    assert len(problems) == 1 and "train_img/frame5.png" in problems[0]


def test_truncated_png_is_named(lab: Path) -> None:
    bad = lab / "val" / "val_label" / "frame3.png"
    bad.write_bytes(bad.read_bytes()[:-30])
    problems = check_data(lab, cfg(lab))
    assert len(problems) == 1 and "val_label/frame3.png is not a readable image" in problems[0]


def test_check_collects_structure_and_corrupt_files_together(lab: Path) -> None:
    (lab / "train" / "train_label" / "frame3.png").unlink()
    (lab / "val" / "val_img" / "frame4.png").write_bytes(b"junk")
    problems = check_data(lab, cfg(lab))
    assert len(problems) == 2
    assert "frame3.png has no pose image" in problems[0] and "val_img/frame4.png is not a readable" in problems[1]


def test_too_few_frames(lab: Path) -> None:
    with pytest.raises(DataError, match=r"12 frame/pose pairs, fewer than one training clip \(train_vi_len=16\)"):
        load_data(cfg(lab, train_vi_len=16))
    with pytest.raises(DataError, match=r"fewer than one validation video \(val_vi_len=21\).*--set val_vi_len"):
        load_data(cfg(lab, val_vi_len=21))


def test_missing_data_dir_and_split(tmp_path: Path, lab: Path) -> None:
    with pytest.raises(DataError, match="data dir .*nowhere not found"):
        load_data(cfg(tmp_path / "nowhere"))
    assert len(check_data(tmp_path / "nowhere")) == 1
    for p in (lab / "val").rglob("*.png"):
        p.unlink()
    for d in ("val/val_img", "val/val_label", "val"):
        (lab / d).rmdir()
    problems = check_data(lab, cfg(lab))
    assert len(problems) == 2 and all("val_img" in p or "val_label" in p for p in problems)
    assert "folder not found" in problems[0]
    with pytest.raises(DataError, match="val_img: folder not found"):
        load_data(cfg(lab))


def test_test_split(synth_set: Path) -> None:
    data = load_data(cfg(synth_set))
    assert data.test_ids == ["0", "1"]
    assert data.test_first.shape == (2, 3, 16, 32) and data.test_poses.shape == (2, 20, 3, 16, 32)
    assert summary(synth_set, cfg(synth_set)).endswith("2 test videos")


def test_test_split_errors(synth_set: Path) -> None:
    (synth_set / "test" / "test_label" / "1" / "frame19.png").unlink()
    (synth_set / "test" / "test_img" / "0" / "frame0.png").unlink()
    (synth_set / "test" / "test_label" / "2").mkdir()
    problems = check_data(synth_set, cfg(synth_set))
    assert any("test_label/2 has no first frame" in p for p in problems)
    assert any("test_img/0 has no first frame" in p for p in problems)
    assert len(problems) == 2
    # with video 0 whole again, video 1's 19 poses disagree with video 0's 20
    write_png(synth_set / "test" / "test_img" / "0" / "frame0.png", 3)
    (synth_set / "test" / "test_label" / "2").rmdir()
    with pytest.raises(DataError, match=r"test_label/1 has 19 poses but .*test_label/0 has 20"):
        load_data(cfg(synth_set))


# --- decode cache -----------------------------------------------------------------------------------------


def test_cache_is_built_once_and_reused(synth_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_data(cfg(synth_set))
    caches = sorted(p.name for p in (synth_set / ".hpo-cache").glob("*.npy"))
    assert [c.split("-")[0] for c in caches] == ["test", "train", "val"]

    def no_png(*args, **kwargs):
        raise AssertionError("a warm load must not open PNGs")

    monkeypatch.setattr(PIL.Image, "open", no_png)
    second = load_data(cfg(synth_set))
    assert torch.equal(first.train.frames, second.train.frames) and torch.equal(first.val.poses, second.val.poses)
    assert torch.equal(first.test_poses, second.test_poses)
    with pytest.raises(AssertionError):  # the patch is live: another frame size would need decoding
        load_data(cfg(synth_set, frame_h=8, frame_w=16))


def test_cache_rebuilt_when_a_file_changes(lab: Path) -> None:
    load_data(cfg(lab))
    old = set((lab / ".hpo-cache").glob("train-*.npy"))
    write_png(lab / "train" / "train_img" / "frame4.png", 77)  # rewrite: new mtime and content
    data = load_data(cfg(lab))
    assert data.train.frames[1, 0].eq(77).all()
    new = set((lab / ".hpo-cache").glob("train-*.npy"))
    assert len(new) == 1 and new != old  # the stale cache is gone
    t = time.time() + 5
    os.utime(lab / "val" / "val_label" / "frame0.png", (t, t))  # touch only: same bytes, new key
    old_val = set((lab / ".hpo-cache").glob("val-*.npy"))
    load_data(cfg(lab))
    assert set((lab / ".hpo-cache").glob("val-*.npy")) != old_val


def test_a_cache_of_an_older_decoder_is_never_read(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(datacache, "VERSION", datacache.VERSION - 1)  # a cache built before the resize changed
        load_data(cfg(lab))
    old = set((lab / ".hpo-cache").glob("*.npy"))
    for path in old:  # poison it: read, it would give wrong frames
        arr = np.load(path, mmap_mode="r+")
        arr[:] = 255
        arr.flush()
        del arr
    data = load_data(cfg(lab))
    assert data.train.frames[:, :, 0, 0, 0].flatten().tolist() == list(range(12))
    new = set((lab / ".hpo-cache").glob("*.npy"))
    assert len(new) == len(old) == 2 and not new & old  # rebuilt under a new key, the old files removed


def test_cache_dir_setting(lab: Path, tmp_path: Path) -> None:
    load_data(cfg(lab, cache_dir=str(tmp_path / "cache")))
    assert not (lab / ".hpo-cache").exists()
    (sub,) = (tmp_path / "cache").iterdir()
    assert sub.name.startswith("lab-") and len(list(sub.glob("*.npy"))) == 2


def test_unwritable_cache_dir_is_a_data_error(lab: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=r"cannot write the decode cache .*--set cache_dir=DIR"):
        load_data(cfg(lab, cache_dir=str(blocker / "cache")))


def test_pool_decode_matches_inline(synth_set: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = sorted((synth_set / "val" / "val_img").glob("*.png"), key=lambda p: frame_key(p.name))
    inline = tmp_path / "inline.npy"
    assert datacache.decode_to_file(files, (16, 32), inline) == []
    monkeypatch.setattr(datacache, "POOL_MIN_FILES", 4)
    monkeypatch.setattr(datacache, "_cpu_count", lambda: 2)
    (files[3]).write_bytes(b"broken")
    pooled = tmp_path / "pooled.npy"
    errors = datacache.decode_to_file(files, (16, 32), pooled)
    assert [i for i, _ in errors] == [3]
    a, b = np.load(inline), np.load(pooled)
    assert np.array_equal(np.delete(a, 3, 0), np.delete(b, 3, 0))


def _load_in_child(data: str, log: str, barrier, results) -> None:  # runs in a spawned process
    real = datacache.decode_to_file

    def slow(files, size, out_path):
        with open(log, "a") as fh:
            fh.write(Path(out_path).name.split("-")[0] + "\n")
        time.sleep(0.5)  # keep the build open long enough for the other process to arrive
        return real(files, size, out_path)

    datacache.decode_to_file = slow
    barrier.wait()
    d = load_data(cfg(data))
    results.put(int(d.train.frames.sum()) + int(d.val.poses.sum()))


def test_two_processes_build_the_cache_once(lab: Path, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    log = tmp_path / "builds.log"
    procs = [ctx.Process(target=_load_in_child, args=(str(lab), str(log), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    sums = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(log.read_text().split()) == ["train", "val"]  # each split decoded by one process only
    assert sums[0] == sums[1]
    here = load_data(cfg(lab))
    assert int(here.train.frames.sum()) + int(here.val.poses.sum()) == sums[0]
    assert not list((lab / ".hpo-cache").glob("*.tmp*"))


# --- synthetic set ----------------------------------------------------------------------------------------


def test_synthetic_is_byte_identical_for_a_seed(tmp_path: Path, synth_set: Path) -> None:
    again = make_synthetic(tmp_path / "again", seed=1, **TINY)
    other = make_synthetic(tmp_path / "other", seed=2, **TINY)
    digest = files_digest(synth_set)
    assert len(digest) == 40 * 2 + 20 * 2 + 2 * (1 + 20)
    assert files_digest(again) == digest
    other_digest = files_digest(other)
    assert other_digest.keys() == digest.keys()
    assert sum(other_digest[k] != digest[k] for k in digest) > 0.9 * len(digest)


def test_synthetic_data_shapes_and_determinism() -> None:
    c = cfg(train_vi_len=6, synth_val_videos=2)
    data = synthetic_data(c)
    assert data.train.frames.shape == (6, 6, 3, 16, 32) and data.train.poses.shape == (6, 6, 3, 16, 32)
    assert data.val.frames.shape == (2, 20, 3, 16, 32)
    assert data.test_first.shape == (1, 3, 16, 32) and data.test_poses.shape == (1, 20, 3, 16, 32)
    assert data.train.frames.dtype == torch.uint8 and data.test_ids == ["0"]
    assert data.source == "synthetic(seed=1)" and load_data(c).source == "synthetic(seed=1)"
    assert torch.equal(synthetic_data(c).val.frames, data.val.frames)
    assert not torch.equal(synthetic_data(cfg(synth_seed=2)).val.frames, synthetic_data(cfg()).val.frames)
    # The training seed leaves the data alone: reruns of one config with other seeds are scored on the same set.
    reseeded = synthetic_data(c.replace(seed=2))
    assert torch.equal(reseeded.val.frames, data.val.frames) and torch.equal(reseeded.train.frames, data.train.frames)
    assert not torch.equal(data.val.frames[0], data.val.frames[1])  # two different stretches of the dance


def test_synthetic_data_matches_the_written_set(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "s", seed=1, **{**TINY, "height": 32, "width": 64, "test_videos": 1})
    loaded, memory = load_data(cfg(root)), synthetic_data(cfg())
    for a, b in (
        (loaded.train.frames, memory.train.frames),
        (loaded.val.frames, memory.val.frames),
        (loaded.test_first, memory.test_first),
    ):
        assert a.shape == b.shape
        assert (a.float() - b.float()).abs().mean() < 6  # same renderer; only the resize differs


def test_the_built_in_set_written_to_disk_loads_pixel_for_pixel(tmp_path: Path) -> None:
    """`hpo data synth` (builtin_set's arguments) writes the very set that `data = ""` trains on."""
    config = cfg(train_vi_len=6, synth_val_videos=2, synth_seed=4)
    root = make_synthetic(tmp_path / "builtin", **synth.builtin_set(config))
    loaded, memory = load_data(config.replace(data=str(root))), synthetic_data(config)
    for a, b in (
        (loaded.train.frames, memory.train.frames),
        (loaded.train.poses, memory.train.poses),
        (loaded.val.frames, memory.val.frames),
        (loaded.val.poses, memory.val.poses),
        (loaded.test_first, memory.test_first),
        (loaded.test_poses, memory.test_poses),
    ):
        assert torch.equal(a, b)
    assert loaded.test_ids == memory.test_ids == ["0"]


def test_synthetic_motion_is_small_but_visible_and_appearance_fixed() -> None:
    motion = synth.Motion.from_seed(4)
    frames, poses = synth.render_times(motion, np.arange(300), 32, 64, 4)
    f = frames.astype(np.float64)
    step = ((f[1:] - f[:-1]) ** 2).mean(axis=(1, 2, 3))
    far = ((f[25:] - f[:-25]) ** 2).mean(axis=(1, 2, 3))
    assert (step > 0).mean() > 0.95  # the figure moves in (nearly) every frame
    assert step.mean() < 0.5 * far.mean()  # ... but less than over a cycle: the last frame is a fair start
    # pixels far from the skeleton show the fixed background, whatever the pose
    bg = synth._to_uint8(synth.background(4, 32, 64))
    skeleton = poses.max(axis=1) > 0  # (N, H, W)
    near = np.zeros_like(skeleton)
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            near |= np.roll(skeleton, (dy, dx), axis=(1, 2))
    assert np.array_equal(np.where(near[:, None], bg, frames), np.broadcast_to(bg, frames.shape))
    assert (near.mean(axis=(1, 2)) < 0.4).all()  # and most of each frame is background
    # pose images are the skeleton on black
    assert (poses.max(axis=1) == 0).mean() > 0.8


def test_synthetic_render_is_fast() -> None:
    start = time.perf_counter()
    synth.render_times(synth.Motion.from_seed(0), np.arange(1000), 32, 64, 0)
    assert time.perf_counter() - start < 3.0


def test_make_synthetic_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="exists and is not empty: choose a new --out"):
        make_synthetic(tmp_path / "busy", **TINY)
    assert os.listdir(tmp_path / "busy") == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert make_synthetic(tmp_path / "empty", **TINY) == tmp_path / "empty"
    assert (tmp_path / "empty" / "train" / "train_img" / "frame39.png").is_file()


def test_failed_synth_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = synth._write_png

    def fail_late(path, chw):
        calls.append(path)
        if len(calls) > 50:
            raise OSError(28, "No space left on device")
        real(path, chw)

    monkeypatch.setattr(synth, "_write_png", fail_late)
    with pytest.raises(OSError):
        make_synthetic(tmp_path / "out", **TINY)
    assert os.listdir(tmp_path) == []
