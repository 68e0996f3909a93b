"""The built-in synthetic dance data set (docs/ARCHITECTURE.md, "Data"), rendered with numpy.

A jointed stick figure dances: every joint angle is a sum of a few seeded sinusoids and the root sways
across the frame. The pose image is the figure's colored skeleton on black; the frame is the same figure
dressed (thick limbs and body in fixed colors, a head) on a fixed plain background (a wall over a floor).
A frame is therefore a function of its pose plus a fixed appearance, so predicting the next frame from
the previous one and the pose is learnable, and the dance is brisk enough (limbs move a few pixels per
frame) that copying the last frame scores only ~24 dB: a model that has learnt the appearance beats it by
several dB within a few CPU-minutes of training (tests/test_train.py, the `small` study profile).

All geometry is in units of the frame height, so renders at different sizes agree after a resize.
Drawing is anti-aliased analytically: a capsule's coverage of a pixel is clip(radius - distance + 0.5).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.config import TrainConfig
from model.dataset import DataSet, Videos
from model.errors import DataError

__all__ = [
    "Motion",
    "background",
    "builtin_set",
    "make_synthetic",
    "render",
    "render_times",
    "split_times",
    "synthetic_data",
]

logger = logging.getLogger(__name__)

# Joints: 0 pelvis, 1 chest, 2 head centre, 3/4 left shoulder/right shoulder, 5/6 left/right elbow,
# 7/8 left/right wrist, 9/10 left/right hip, 11/12 left/right knee, 13/14 left/right ankle.
N_JOINTS = 15
SPINE, NECK, HEAD_R = 0.28, 0.10, 0.075  # lengths in frame heights
SHOULDER_W, HIP_W = 0.08, 0.052  # half-widths of the shoulder and hip lines
UPPER_ARM, FOREARM, THIGH, SHIN = 0.16, 0.15, 0.205, 0.205
PELVIS_Y = 0.52  # mean pelvis height (frame heights from the top)

# Angles (radians): (base, total amplitude). Limb angles are measured from straight down, bends are
# relative to the parent bone. Amplitudes are split over three sinusoids per angle.
ANGLES = {
    "torso": (0.0, 0.22),
    "l_shoulder": (0.55, 1.1),
    "r_shoulder": (-0.55, 1.1),
    "l_elbow": (0.8, 0.7),
    "r_elbow": (-0.8, 0.7),
    "l_hip": (0.12, 0.35),
    "r_hip": (-0.12, 0.35),
    "l_knee": (-0.4, 0.3),
    "r_knee": (0.4, 0.3),
}
N_WAVES = 3
# Frames per cycle of a joint sinusoid: limbs move ~2-4 px per frame at 32x64 (more at the hands), so
# copying the last frame scores ~24 dB PSNR and the pose is needed to do better.
MIN_PERIOD, MAX_PERIOD = 6.0, 14.0
# Frames per cycle of the two sinusoids of the root's sway across the frame, and of its vertical bounce.
SWAY_PERIODS, BOUNCE_PERIOD = ((40.0, 80.0), (15.0, 30.0)), (30.0, 50.0)
# Split starts on the time axis: validation and test videos are other stretches of the same dance.
VAL_T0, TEST_T0, GAP = 10_000_000, 20_000_000, 1000

# Bones (joint a, joint b, radius in frame heights, RGB), drawn in order (painter's algorithm).
POSE_R = 0.022
POSE_BONES = [
    (0, 1, (1.0, 0.0, 0.0)),
    (1, 2, (1.0, 0.5, 0.0)),
    (3, 4, (1.0, 1.0, 0.0)),
    (3, 5, (0.5, 1.0, 0.0)),
    (5, 7, (0.0, 1.0, 0.0)),
    (4, 6, (0.0, 1.0, 0.5)),
    (6, 8, (0.0, 1.0, 1.0)),
    (9, 10, (0.0, 0.5, 1.0)),
    (9, 11, (0.0, 0.0, 1.0)),
    (11, 13, (0.5, 0.0, 1.0)),
    (10, 12, (1.0, 0.0, 1.0)),
    (12, 14, (1.0, 0.0, 0.5)),
    (2, 2, (1.0, 1.0, 1.0)),  # a dot on the head centre
]
SKIN, HAIR = (0.93, 0.76, 0.62), (0.18, 0.11, 0.07)
BODY_BONES = [
    (9, 11, 0.056, (0.16, 0.24, 0.62)),  # left thigh (trousers)
    (11, 13, 0.05, (0.16, 0.24, 0.62)),
    (10, 12, 0.056, (0.22, 0.32, 0.78)),  # right thigh, a lighter shade so left and right differ
    (12, 14, 0.05, (0.22, 0.32, 0.78)),
    (9, 10, 0.062, (0.16, 0.24, 0.62)),  # hips
    (0, 1, 0.094, (0.84, 0.22, 0.18)),  # torso (shirt)
    (3, 4, 0.056, (0.84, 0.22, 0.18)),  # shoulders
    (1, 2, 0.031, SKIN),  # neck
    (3, 5, 0.044, (0.95, 0.55, 0.15)),  # left upper arm (sleeve)
    (5, 7, 0.038, SKIN),
    (4, 6, 0.044, (0.98, 0.78, 0.2)),  # right upper arm
    (6, 8, 0.038, SKIN),
]
CHUNK = 64  # frames rendered per vectorised step (bounds the temporaries to a few MB)


@dataclass
class Motion:
    """Seeded parameters of the dance; `joints(t)` is deterministic for any frame times."""

    base: np.ndarray  # (A,) rest angle of each entry of ANGLES
    amp: np.ndarray  # (A, N_WAVES) amplitudes (radians)
    freq: np.ndarray  # (A, N_WAVES) cycles per frame
    phase: np.ndarray  # (A, N_WAVES) radians
    drift: np.ndarray  # (4,) periods (frames) and phases of the two root-drift sinusoids
    bounce: np.ndarray  # (2,) cycles per frame and phase of the vertical bounce

    @classmethod
    def from_seed(cls, seed: int) -> Motion:
        rng = np.random.default_rng(seed)
        n = len(ANGLES)
        base = np.array([b for b, _ in ANGLES.values()])
        weights = rng.dirichlet(np.ones(N_WAVES), size=n)  # how each angle's amplitude splits over waves
        amp = weights * np.array([a for _, a in ANGLES.values()])[:, None]
        freq = 1.0 / rng.uniform(MIN_PERIOD, MAX_PERIOD, size=(n, N_WAVES))
        phase = rng.uniform(0, 2 * np.pi, size=(n, N_WAVES))
        (a1, b1), (a2, b2) = SWAY_PERIODS
        drift = np.array([rng.uniform(a1, b1), rng.uniform(0, 2 * np.pi), rng.uniform(a2, b2), rng.uniform(0, 6.3)])
        bounce = np.array([1.0 / rng.uniform(*BOUNCE_PERIOD), rng.uniform(0, 2 * np.pi)])
        return cls(base, amp, freq, phase, drift, bounce)

    def joints(self, t: np.ndarray, aspect: float) -> np.ndarray:
        """Frame times (N,) -> joint positions (N, N_JOINTS, 2) as (x, y) in frame heights.

        `aspect` is width / height: the root drifts across the middle of the frame's width.
        """
        t = np.asarray(t, dtype=np.float64)[:, None]  # (N, 1)
        ang = self.base + (self.amp[None] * np.sin(2 * np.pi * self.freq[None] * t[..., None] + self.phase)).sum(-1)
        torso, ls, rs, le, re, lh, rh, lk, rk = ang.T  # each (N,)
        period1, phase1, period2, phase2 = self.drift
        drift = 0.65 * np.sin(2 * np.pi * t[:, 0] / period1 + phase1) + 0.35 * np.sin(
            2 * np.pi * t[:, 0] / period2 + phase2
        )
        x0 = aspect / 2 + drift * max(aspect / 2 - 0.4, 0.05)
        y0 = PELVIS_Y + 0.02 * np.sin(2 * np.pi * self.bounce[0] * t[:, 0] + self.bounce[1])
        j = np.zeros((t.shape[0], N_JOINTS, 2))
        j[:, 0] = np.stack([x0, y0], -1)
        up = np.stack([np.sin(torso), -np.cos(torso)], -1)  # spine direction
        side = np.stack([np.cos(torso), np.sin(torso)], -1)  # perpendicular: shoulders and hips
        j[:, 1] = j[:, 0] + SPINE * up
        j[:, 2] = j[:, 1] + NECK * up
        j[:, 3] = j[:, 1] + SHOULDER_W * side
        j[:, 4] = j[:, 1] - SHOULDER_W * side
        j[:, 5] = j[:, 3] + UPPER_ARM * _down(ls)
        j[:, 6] = j[:, 4] + UPPER_ARM * _down(rs)
        j[:, 7] = j[:, 5] + FOREARM * _down(ls + le)
        j[:, 8] = j[:, 6] + FOREARM * _down(rs + re)
        j[:, 9] = j[:, 0] + HIP_W * side
        j[:, 10] = j[:, 0] - HIP_W * side
        j[:, 11] = j[:, 9] + THIGH * _down(lh)
        j[:, 12] = j[:, 10] + THIGH * _down(rh)
        j[:, 13] = j[:, 11] + SHIN * _down(lh + lk)
        j[:, 14] = j[:, 12] + SHIN * _down(rh + rk)
        return j


def _down(angle: np.ndarray) -> np.ndarray:
    """Unit vectors at `angle` radians from straight down (image y grows downwards)."""
    return np.stack([np.sin(angle), np.cos(angle)], -1)


def background(seed: int, height: int, width: int) -> np.ndarray:
    """The fixed background (3, H, W) float32 in [0, 1]: a plain wall over a plain floor, soft horizon.

    Plain on purpose: a texture is appearance the decoder must memorise before it beats copying the last
    frame (measured: a wavy wall cost ~7 dB after 3 small-profile epochs), and adds nothing to the task.
    """
    rng = np.random.default_rng([seed, 7])
    y = (np.mgrid[0:height, 0:width][0] + 0.5) / height  # pixel centres in frame heights
    wall = rng.uniform(0.35, 0.6, size=3)
    floor = rng.uniform(0.2, 0.4, size=3)
    img = np.empty((3, height, width))
    is_floor = 1 / (1 + np.exp(-(y - 0.86) * 60))  # soft horizon
    for c in range(3):
        img[c] = wall[c] * (1 - is_floor) + floor[c] * is_floor
    return np.clip(img, 0, 1).astype(np.float32)


def render(joints: np.ndarray, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions (N, N_JOINTS, 2) in frame heights -> (frames, poses), each uint8 (N, 3, H, W)."""
    n = joints.shape[0]
    bg = background(seed, height, width)
    frames = np.empty((n, 3, height, width), np.uint8)
    poses = np.empty((n, 3, height, width), np.uint8)
    hair, face = _head_discs(joints)
    for s in range(0, n, CHUNK):
        jp = (joints[s : s + CHUNK] * height).astype(np.float32)  # (n, J, 2) in pixels
        pose = np.zeros((jp.shape[0], 3, height, width), np.float32)
        for a, b, color in POSE_BONES:
            _paint(pose, jp[:, a], jp[:, b], max(POSE_R * height, 0.6), color)
        frame = np.repeat(bg[None], jp.shape[0], axis=0)
        for a, b, radius, color in BODY_BONES:
            _paint(frame, jp[:, a], jp[:, b], radius * height, color)
        for centre, radius, color in ((hair, HEAD_R, HAIR), (face, HEAD_R * 0.85, SKIN)):
            c = (centre[s : s + CHUNK] * height).astype(np.float32)
            _paint(frame, c, c, radius * height, color)
        frames[s : s + CHUNK] = _to_uint8(frame)
        poses[s : s + CHUNK] = _to_uint8(pose)
    return frames, poses


def _head_discs(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the hair disc and of the face disc drawn over it (a rim of hair shows on top)."""
    head = joints[:, 2]
    up = head - joints[:, 1]
    up = up / np.linalg.norm(up, axis=-1, keepdims=True)
    return head + 0.012 * up, head - 0.008 * up


def _paint(img: np.ndarray, a: np.ndarray, b: np.ndarray, r: float, color: tuple[float, float, float]) -> None:
    """Alpha-blend an anti-aliased capsule from a to b ((n, 2) pixels) of radius r into img (n, 3, H, W).

    Only the window the capsule covers in any of the n frames is computed (a pixel further than r + 0.5
    from the segment gets no coverage), which keeps the cost near the drawn area, not the frame area.
    """
    h, w = img.shape[-2:]
    ends = np.concatenate([a, b])  # (2n, 2)
    x0, y0 = np.maximum(np.floor(ends.min(0) - r - 1).astype(int), 0)
    x1, y1 = np.ceil(ends.max(0) + r + 1).astype(int)
    x1, y1 = min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return  # out of the frame
    px = np.arange(x0, x1, dtype=np.float32) + np.float32(0.5)  # pixel centres
    py = np.arange(y0, y1, dtype=np.float32) + np.float32(0.5)
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]  # (n, 1, 1)
    bx, by = b[:, 0, None, None] - ax, b[:, 1, None, None] - ay
    dx, dy = px[None, None, :] - ax, py[None, :, None] - ay  # (n, 1, w'), (n, h', 1)
    t = np.clip((dx * bx + dy * by) / (bx * bx + by * by + np.float32(1e-9)), 0, 1)  # (n, h', w')
    ex, ey = dx - t * bx, dy - t * by
    cover = np.clip(np.float32(r + 0.5) - np.sqrt(ex * ex + ey * ey), 0, 1)[:, None]  # (n, 1, h', w')
    win = img[:, :, y0:y1, x0:x1]
    win += cover * (np.asarray(color, np.float32)[None, :, None, None] - win)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Split:
    """Frame times of each video of one split: train is one run, val/test are separate stretches."""

    train: np.ndarray  # (train_frames,)
    val: list[np.ndarray]  # val_videos arrays of val_len times
    test: list[np.ndarray]  # test_videos arrays of test_len times


def split_times(train_frames: int, val_videos: int, val_len: int, test_videos: int, test_len: int) -> Split:
    """Where each split lies on the dance's time axis (independent of the other splits' sizes)."""
    val = [VAL_T0 + v * (val_len + GAP) + np.arange(val_len) for v in range(val_videos)]
    test = [TEST_T0 + k * (test_len + GAP) + np.arange(test_len) for k in range(test_videos)]
    return Split(np.arange(train_frames), val, test)


def render_times(motion: Motion, times: np.ndarray, height: int, width: int, seed: int) -> tuple[np.ndarray, ...]:
    """Frames and poses, uint8 (N, 3, H, W), of the dance at `times`."""
    return render(motion.joints(times, width / height), height, width, seed)


def synthetic_data(config: TrainConfig) -> DataSet:
    """The built-in synthetic set in memory at config.frame_h x config.frame_w; writes no files.

    config.synth_train_frames training frames cut into clips of config.train_vi_len, config.synth_val_videos
    validation videos of config.val_vi_len frames, and a test split of one video (its first frame and
    config.val_vi_len poses), all from the dance seeded by config.synth_seed. Not config.seed: rerunning a config
    with other training seeds (`hpo top --seeds`, `hpo retrain --seeds`) must score it on the same data.
    """
    h, w, seed = config.frame_h, config.frame_w, config.synth_seed
    motion = Motion.from_seed(seed)
    times = split_times(config.synth_train_frames, config.synth_val_videos, config.val_vi_len, 1, config.val_vi_len)
    n_clips = config.synth_train_frames // config.train_vi_len
    train_f, train_p = render_times(motion, times.train[: n_clips * config.train_vi_len], h, w, seed)
    val_f, val_p = render_times(motion, np.concatenate(times.val), h, w, seed)
    test_f, test_p = render_times(motion, times.test[0], h, w, seed)
    shape = (h, w)

    def videos(frames: np.ndarray, poses: np.ndarray, length: int) -> Videos:
        return Videos(
            torch.from_numpy(frames).view(-1, length, 3, *shape), torch.from_numpy(poses).view(-1, length, 3, *shape)
        )

    return DataSet(
        train=videos(train_f, train_p, config.train_vi_len),
        val=videos(val_f, val_p, config.val_vi_len),
        test_first=torch.from_numpy(test_f[:1].copy()),
        test_poses=torch.from_numpy(test_p).view(1, -1, 3, *shape),
        test_ids=["0"],
        source=f"synthetic(seed={seed})",
    )


def builtin_set(config: TrainConfig) -> dict[str, int]:
    """make_synthetic's arguments that write the built-in set of `config` (`data = ""`) in the lab layout.

    Loading the written folder with the same config gives synthetic_data(config) pixel for pixel: one synthetic
    set, reachable the same way in memory, on disk (`hpo data synth`) and in `hpo predict`.
    """
    return {
        "seed": config.synth_seed,
        "train_frames": config.synth_train_frames,
        "val_videos": config.synth_val_videos,
        "val_len": config.val_vi_len,
        "test_videos": 1,
        "test_len": config.val_vi_len,
        "height": config.frame_h,
        "width": config.frame_w,
    }


def make_synthetic(
    out: str | Path,
    seed: int = 0,
    *,
    train_frames: int = 640,
    val_videos: int = 1,
    val_len: int = 630,
    test_videos: int = 2,
    test_len: int = 630,
    height: int = 64,
    width: int = 128,
) -> Path:
    """Write the synthetic dance set in the lab layout under `out` and return its path.

    Byte-identical for the same arguments. Written into a temporary sibling folder and renamed into
    place, so a failure leaves nothing behind.

    Raises:
        DataError: `out` exists and is not an empty folder, or a size is out of range.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output dir {out} exists and is not empty: choose a new --out or remove it")
    for name, value, low in (
        ("train_frames", train_frames, 1),
        ("val_videos", val_videos, 1),
        ("val_len", val_len, 1),
        ("test_videos", test_videos, 0),
        ("test_len", test_len, 1),
        ("height", height, 4),
        ("width", width, 4),
    ):
        if value < low:
            raise DataError(f"synthetic {name} must be >= {low}, got {value}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        motion = Motion.from_seed(seed)
        times = split_times(train_frames, val_videos, val_len, test_videos, test_len)
        _write_pairs(tmp / "train", "train", *render_times(motion, times.train, height, width, seed))
        _write_pairs(tmp / "val", "val", *render_times(motion, np.concatenate(times.val), height, width, seed))
        for k, t in enumerate(times.test):
            frames, poses = render_times(motion, t, height, width, seed)
            _write_png(tmp / "test" / "test_img" / str(k) / "frame0.png", frames[0])
            for i, pose in enumerate(poses):
                _write_png(tmp / "test" / "test_label" / str(k) / f"frame{i}.png", pose)
        os.replace(tmp, out)  # atomic; also replaces an empty existing folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote synthetic set to %s", out)
    return out


def _write_pairs(split_dir: Path, split: str, frames: np.ndarray, poses: np.ndarray) -> None:
    for i, (frame, pose) in enumerate(zip(frames, poses, strict=True)):
        _write_png(split_dir / f"{split}_img" / f"frame{i}.png", frame)
        _write_png(split_dir / f"{split}_label" / f"frame{i}.png", pose)


def _write_png(path: Path, chw: np.ndarray) -> None:
    """Fixed encoder settings and no metadata chunks, so the bytes depend on the pixels only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(path, format="PNG", compress_level=6)
