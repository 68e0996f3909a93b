"""Pictures of a rollout written to disk: an animated GIF of videos side by side and the PSNR-per-frame plot.

PIL only (plotly's static export needs kaleido and a browser, which a GPU worker does not have). Every file
is encoded in memory and written atomically, so a killed run never leaves a half-written picture.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from hpo.artifacts import psnr_plot_png
from model.checkpoint import atomic_write_bytes

__all__ = ["GIF_FRAME_MS", "to_uint8", "video_gif", "write_gif", "write_psnr_plot"]

GIF_FRAME_MS = 40  # 25 frames per second
MIN_HEIGHT = 96  # small frames are upscaled (nearest) to at least this many pixels high
_GAP, _HEAD = 4, 16  # pixels between panels, and above them for the labels


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8, or float in [0, 1] -> uint8 of the same shape (rounded, clamped)."""
    x = frames.detach().cpu()
    if x.dtype == torch.uint8:
        return x
    return (x.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def video_gif(panels: Sequence[torch.Tensor], labels: Sequence[str]) -> list[Image.Image]:
    """GIF frames showing several equally long videos side by side, each under its label.

    panels: (T, 3, H, W) uint8 or float in [0, 1] each, all the same shape. Returns T palette images.
    """
    videos = [to_uint8(p).permute(0, 2, 3, 1).numpy() for p in panels]  # (T, H, W, 3) each
    t, h, w = videos[0].shape[:3]
    scale = max(1, math.ceil(MIN_HEIGHT / h))
    ph, pw = h * scale, w * scale
    canvas = Image.new("RGB", (len(videos) * pw + (len(videos) - 1) * _GAP, _HEAD + ph), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    for i, label in enumerate(labels):
        draw.text((i * (pw + _GAP) + pw // 2, 2), label, fill=(40, 40, 40), font=font, anchor="mt")
    frames = []
    for k in range(t):
        img = canvas.copy()
        for i, video in enumerate(videos):
            tile = Image.fromarray(np.ascontiguousarray(video[k])).resize((pw, ph), Image.Resampling.NEAREST)
            img.paste(tile, (i * (pw + _GAP), _HEAD))
        frames.append(img.quantize(colors=256, method=Image.Quantize.FASTOCTREE))
    return frames


def write_gif(path: str | Path, panels: Sequence[torch.Tensor], labels: Sequence[str]) -> Path:
    """Write `video_gif(panels, labels)` as a looping GIF at `path`, atomically."""
    frames = video_gif(panels, labels)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return Path(path)


def write_psnr_plot(path: str | Path, per_frame: np.ndarray, title: str) -> Path:
    """Write the PSNR-per-frame line plot ((V, L-1) dB, one line per video and their mean) as a PNG."""
    buf = io.BytesIO()
    psnr_plot_png(per_frame, title).save(buf, format="PNG")
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return Path(path)
