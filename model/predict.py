"""From a checkpoint to the lab's submission: roll out every test video and write `submission.csv`.

A test video is its first frame and P pose images (P = 630 on the lab data; pose 0 belongs to the first
frame). The model predicts frames 1..P-1 from the first frame, z drawn from the prior with a generator
seeded by the config's seed, exactly as validation does, so a prediction depends only on the weights.

`submission.csv` (the lab's Kaggle format): a header `id,0,1,...,D-1` with D = 3*H*W (6144 at 32x64), then
one row per frame of every test video in order (the given first frame, then the P-1 predictions): the
running frame number, then the frame's (3, H, W) values flattened in C order as integers in 0..255.

See docs/ARCHITECTURE.md, "Outputs".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import MODEL_SHAPE_FIELDS, atomic_write_bytes, config_of, load_checkpoint, model_from_checkpoint
from model.clip import rollout
from model.config import TrainConfig
from model.data import load_data
from model.dataset import DataSet
from model.device import autocast, resolve_device, time_chunk, to_input
from model.errors import CheckpointError, DataError, UsageError
from model.media import to_uint8, write_gif
from model.net import CVAE
from model.train import evaluate

__all__ = [
    "SHAPE_FIELDS",
    "PredictResult",
    "check_fields",
    "ensure_writable_dir",
    "predict",
    "predict_videos",
    "write_submission",
    "write_test_outputs",
]

log = logging.getLogger(__name__)

SHAPE_FIELDS = (*MODEL_SHAPE_FIELDS, "frame_h", "frame_w")  # what a checkpoint fixes about model and data
SUBMISSION = "submission.csv"
_VALUE_TEXT = np.array([str(v).encode() for v in range(256)], dtype=object)  # uint8 value -> its CSV text


@dataclass
class PredictResult:
    submission: Path
    gifs: list[Path]
    n_videos: int
    n_poses: int  # poses per test video = frames per video in the submission
    val_psnr: float | None = None  # of the same weights on the val videos


def check_fields(saved: TrainConfig, wanted: TrainConfig, names: Iterable[str], where: str, fix: str) -> None:
    """Raise CheckpointError naming the first field in `names` where `saved` (a checkpoint's) and `wanted` differ."""
    for name in names:
        old, new = getattr(saved, name), getattr(wanted, name)
        if old != new:
            raise CheckpointError(
                f"{where} was trained with {name}={old!r} but this run asks for {name}={new!r}: {fix}"
            )


def ensure_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create the output folder now, so an unwritable path fails before any long computation."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".hpo-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to {str(p)!r} ({exc.strerror or exc}): choose a writable {flag}") from None
    return p


@torch.no_grad()
def predict_videos(
    model: CVAE,
    config: TrainConfig,
    first: torch.Tensor,
    poses: torch.Tensor,
    device: torch.device,
    on_frame: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Every test video's frames: (K, 3, H, W) first frames and (K, P, 3, H, W) poses, uint8 ->
    (K, P, 3, H, W) uint8, the given first frame followed by P-1 predictions.

    Each video is rolled out alone with a generator seeded by config.seed, so its prediction does not
    depend on which other videos are in the set. `on_frame` is called after each predicted frame (progress).
    """
    model.eval()
    chunk = time_chunk(config, device)
    out = []
    for k in range(first.shape[0]):
        gen = torch.Generator(device=device).manual_seed(config.seed)
        x0 = to_input(first[k : k + 1], device, config.channels_last)  # (1, 3, H, W)
        p = to_input(poses[k : k + 1], device, config.channels_last)  # (1, P, 3, H, W)
        with autocast(config, device):
            preds = rollout(model, x0, p, gen, chunk, on_frame=on_frame)  # (1, P-1, 3, H, W) float in [0, 1]
        out.append(torch.cat([first[k : k + 1, None], to_uint8(preds)], dim=1))
    return torch.cat(out)


def write_submission(path: str | Path, frames: torch.Tensor) -> Path:
    """Write the lab's submission.csv atomically from (N, 3, H, W) uint8 frames (all videos, in order)."""
    flat = frames.reshape(frames.shape[0], -1).numpy()  # (N, 3*H*W) uint8
    header = ",".join(["id", *map(str, range(flat.shape[1]))]).encode() + b"\n"

    def write(f: Any) -> None:
        f.write(header)
        for i, row in enumerate(flat):  # a lookup table of value texts: ~10x faster than formatting ints
            f.write(str(i).encode() + b"," + b",".join(_VALUE_TEXT[row]) + b"\n")

    atomic_write_bytes(path, write)
    return Path(path)


def _check_test_split(data: DataSet, poses: int) -> tuple[torch.Tensor, torch.Tensor]:
    if data.test_first is None or data.test_poses is None:
        raise DataError(
            f"{data.source} has no test split: add test/test_img/K/<first frame>.png and "
            "test/test_label/K/<poses>.png for each test video K"
        )
    n = data.test_poses.shape[1]
    if n < 2:
        raise DataError(f"test videos of {data.source} have {n} pose: each needs its first frame's pose and 1 more")
    if poses and n != poses:
        raise DataError(f"test videos of {data.source} have {n} poses each, not {poses}: fix the set or drop --poses")
    return data.test_first, data.test_poses


def write_test_outputs(
    model: CVAE,
    config: TrainConfig,
    data: DataSet,
    out: Path,
    device: torch.device,
    poses: int = 0,
    on_frame: Callable[[], None] | None = None,
) -> PredictResult:
    """Roll out the test split of `data`: out/submission.csv and out/test-<id>.gif (prediction beside poses).

    Raises: DataError when the data has no test split or the pose count is wrong.
    """
    first, pose_imgs = _check_test_split(data, poses)
    frames = predict_videos(model, config, first, pose_imgs, device, on_frame)  # (K, P, 3, H, W) uint8
    submission = write_submission(out / SUBMISSION, frames.flatten(0, 1))
    gifs = [
        write_gif(out / f"test-{vid}.gif", [frames[k], pose_imgs[k]], ["predicted", "pose"])
        for k, vid in enumerate(data.test_ids)
    ]
    return PredictResult(submission, gifs, frames.shape[0], frames.shape[1])


def predict(
    checkpoint: str | Path,
    data_dir: str | Path | None,
    out: str | Path,
    sets: dict[str, Any] | None = None,
    poses: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> PredictResult:
    """Load a checkpoint (its config rebuilds the model), roll out the test split of data_dir, write to out.

    Args:
        data_dir: a data set in the lab layout; None: the built-in synthetic set, the one `data = ""` trains on
            (its sizes and seed from the checkpoint's config, so a model trained on it is tried on the same set).
        sets: `--set` values: model-shape and frame-size fields are expectations the checkpoint must meet;
            the others (device, cache_dir, seed, val_vi_len, ...) override the checkpoint's config. The device
            defaults to auto (a GPU when there is one), whatever the training machine used.
        poses: expected poses per test video (0 = any; every video must have the same number).
        progress: called with (rollout steps done, steps in all) after each predicted frame: the test videos'
            frames one by one, then the validation rollout's steps.
    Raises:
        CheckpointError: missing, truncated, or of another shape than `sets` asks for.
        DataError: no test split, or a pose count that differs; UsageError: `out` not writable.
    """
    sets = {"device": "auto", **(sets or {})}  # run where we are, not on the training machine's device
    state = load_checkpoint(checkpoint)
    saved = config_of(state)
    wanted = saved.replace(**sets)
    fix = "pick a checkpoint of that shape or drop the --set"
    check_fields(saved, wanted, [n for n in SHAPE_FIELDS if n in sets], f"checkpoint {str(checkpoint)!r}", fix)
    data_setting = str(data_dir) if data_dir is not None else str(sets.get("data", ""))
    if not data_setting and saved.data:
        log.warning(
            "%s was trained on %s; predicting on the built-in synthetic set (pass --data %s for that set)",
            checkpoint,
            saved.data,
            saved.data,
        )
    config = wanted.replace(data=data_setting, out="")
    device = resolve_device(config.device)
    data = load_data(config)
    first, test_poses = _check_test_split(data, poses)
    model = model_from_checkpoint(state, expect=config).to(device)
    out_dir = ensure_writable_dir(out)  # after every input check (nothing is left behind), before the rollout
    total = first.shape[0] * (test_poses.shape[1] - 1) + data.val.frames.shape[1] - 1
    done = 0

    def on_frame() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    result = write_test_outputs(model, config, data, out_dir, device, poses, on_frame)
    val = evaluate(model, data.val, config, device, on_frame=on_frame).val_psnr
    result.val_psnr = val if math.isfinite(val) else None
    log.info("predicted %d test videos of %d frames into %s", result.n_videos, result.n_poses, out_dir)
    return result
