"""Pictures of a rollout: an animated GIF of videos side by side, the PSNR-per-frame plot, a frame strip.

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

from model.checkpoint import atomic_write_bytes

__all__ = ["GIF_FRAME_MS", "frame_strip_png", "psnr_plot_png", "to_uint8", "video_gif", "write_gif", "write_psnr_plot"]

GIF_FRAME_MS = 40  # 25 frames per second
MIN_HEIGHT = 96  # small frames are upscaled (nearest) to at least this many pixels high
STRIP_COLUMNS = 8  # frames shown in the predicted-vs-true strip
STRIP_MIN_HEIGHT = 64  # frames are upscaled (nearest) to at least this many pixels high
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


_BLUE, _LIGHT, _GRID, _INK = (31, 119, 180), (158, 202, 225), (225, 225, 225), (40, 40, 40)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (1, 2, 5 times a power of ten apart)."""
    span = hi - lo if hi > lo else 1.0
    raw = span / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def psnr_plot_png(per_frame: np.ndarray, title: str, size: tuple[int, int] = (640, 300)) -> Image.Image:
    """Line plot of PSNR per predicted frame: one light line per val video, the mean over videos in bold.

    per_frame: (V, L-1) dB. Frame numbers on the x axis start at 1 (frame 0 is given, not predicted).
    """
    curves = np.nan_to_num(np.atleast_2d(np.asarray(per_frame, dtype=float)), nan=0.0, posinf=100.0, neginf=0.0)
    mean = curves.mean(axis=0)
    width, height = size
    left, right, top, bottom = 56, 16, 40, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    lo, hi = float(curves.min()), float(curves.max())
    pad = max(0.5, 0.05 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    n = curves.shape[1]

    def x_of(i: float) -> float:
        return left + (width - left - right) * (i / max(1, n - 1))

    def y_of(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - lo) / (hi - lo))

    small = _font(11)
    for v in _nice_ticks(lo, hi):
        y = y_of(v)
        draw.line([(left, y), (width - right, y)], fill=_GRID)
        draw.text((left - 6, y), f"{v:g}", fill=_INK, font=small, anchor="rm")
    for i in _nice_ticks(1, n, 6):
        x = x_of(int(i) - 1)
        draw.line([(x, height - bottom), (x, height - bottom + 4)], fill=_INK)
        draw.text((x, height - bottom + 6), f"{int(i)}", fill=_INK, font=small, anchor="mt")
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill=_INK)
    if len(curves) > 1:
        for curve in curves:
            draw.line([(x_of(i), y_of(v)) for i, v in enumerate(curve)], fill=_LIGHT, width=1)
    draw.line([(x_of(i), y_of(v)) for i, v in enumerate(mean)], fill=_BLUE, width=2)
    draw.text((left, 6), f"{title} (mean {mean.mean():.2f} dB)", fill=_INK, font=_font(13))
    draw.text((width - right, height - 6), "predicted frame", fill=_INK, font=small, anchor="rb")
    draw.text((4, top - 16), "PSNR (dB)", fill=_INK, font=small)
    return img


def frame_strip_png(truth: torch.Tensor, preds: torch.Tensor, columns: int = STRIP_COLUMNS) -> Image.Image:
    """Every Nth frame of one video: true frames on the top row, predictions below, upscaled (nearest).

    truth: (T, 3, H, W) uint8 or float in [0, 1]; preds: (T, 3, H, W) float in [0, 1], aligned with truth.
    """
    t, _, h, w = preds.shape
    step = max(1, math.ceil(t / columns))
    picks = list(range(0, t, step))
    scale = max(1, math.ceil(STRIP_MIN_HEIGHT / h))
    label_w, head_h, gap = 44, 16, 2
    cw, ch = w * scale, h * scale
    img = Image.new("RGB", (label_w + len(picks) * (cw + gap), head_h + 2 * ch + gap), "white")
    draw = ImageDraw.Draw(img)
    font = _font(11)
    for row, (name, video) in enumerate((("true", truth), ("pred", preds))):
        draw.text((4, head_h + row * (ch + gap) + ch // 2), name, fill=_INK, font=font, anchor="lm")
        for col, i in enumerate(picks):
            tile = Image.fromarray(to_uint8(video[i]).permute(1, 2, 0).contiguous().numpy()).resize(
                (cw, ch), Image.Resampling.NEAREST
            )
            img.paste(tile, (label_w + col * (cw + gap), head_h + row * (ch + gap)))
    for col, i in enumerate(picks):  # frame numbers of the video (frame 0 is the given first frame)
        draw.text((label_w + col * (cw + gap) + cw // 2, 2), str(i + 1), fill=_INK, font=font, anchor="mt")
    return img
