"""The in-memory data set every part of the model reads: uint8 frame and pose tensors, split by use.

`model.data` fills it from a folder in the lab layout, `model.synth` from the built-in synthetic dance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DataSet", "Videos"]


@dataclass
class Videos:
    """A batch of equally long frame runs and their pose images."""

    frames: torch.Tensor  # uint8 (V, L, 3, H, W): V clips/videos of L frames, RGB
    poses: torch.Tensor  # uint8 (V, L, 3, H, W): pose image of each frame


@dataclass
class DataSet:
    """Everything training, evaluation and prediction read; tensors stay uint8 until batched."""

    train: Videos  # non-overlapping consecutive clips of config.train_vi_len frames
    val: Videos  # consecutive videos of config.val_vi_len frames (>= 1 video)
    test_first: torch.Tensor | None  # uint8 (K, 3, H, W) first frame of each test video, or None (no test split)
    test_poses: torch.Tensor | None  # uint8 (K, P, 3, H, W) poses of each test video (P = 630 on the lab data)
    test_ids: list[str]  # names of the test video folders, in numeric order
    source: str  # e.g. "synthetic(seed=1)" or the resolved data path
