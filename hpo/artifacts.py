"""Trial and study artifacts (DESIGN §8): where they live, and the two images every finished trial gets.

Optuna keeps only references to artifacts in the storage; the files go to an artifact store. Ours is a
`FileSystemArtifactStore` whose folder follows from the storage URL, so `hpo run`, `hpo dashboard` and
`hpo export` agree on it without a flag:

- `$HPO_ARTIFACTS` when set (use it for PostgreSQL studies whose workers share a mounted folder);
- `sqlite:///DIR/NAME.db` -> `DIR/NAME-artifacts/` beside the database file (`hpo.db` -> `hpo-artifacts/`);
- a journal file `journal:///DIR/NAME.log` -> `DIR/NAME-artifacts/` likewise;
- any other URL (PostgreSQL, in-memory SQLite) -> `./hpo-artifacts/` in the working directory.

Artifacts attach to a trial only while it is RUNNING, so `upload_trial_artifacts` runs inside the objective
(its `after_train` hook), after training and before the trial is told its value.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from PIL import Image, ImageDraw, ImageFont

from model.config import TrainConfig
from model.data import DataSet
from model.train import TrainResult, evaluate

__all__ = [
    "ARTIFACTS_ENV",
    "PSNR_ATTR",
    "artifact_store_for",
    "artifacts_dir",
    "attach_to_study",
    "frame_strip_png",
    "psnr_plot_png",
    "upload_trial_artifacts",
]

log = logging.getLogger(__name__)

ARTIFACTS_ENV = "HPO_ARTIFACTS"
PSNR_ATTR = "psnr_per_frame"  # user attr: mean over val videos of each predicted frame's PSNR, dB, 3 decimals
STRIP_COLUMNS = 8  # frames shown in the predicted-vs-true strip
STRIP_MIN_HEIGHT = 64  # frames are upscaled (nearest) to at least this many pixels high


def artifacts_dir(url: str) -> Path:
    """The artifact folder for a storage URL, by the rule in this module's docstring (absolute path)."""
    env = os.environ.get(ARTIFACTS_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    db = _storage_file(url)
    if db is None:
        return (Path.cwd() / "hpo-artifacts").resolve()
    return db.resolve().parent / f"{db.stem}-artifacts"


def _storage_file(url: str) -> Path | None:
    """The file behind a file-backed storage URL (SQLite database or journal), else None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("sqlite", "journal"):
        return None
    # Both follow SQLAlchemy's rule: sqlite:///rel.db is relative to the cwd, sqlite:////abs.db absolute.
    path = rest[1:] if rest.startswith("/") else rest
    path = path.split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def artifact_store_for(url: str, directory: str | Path | None = None) -> FileSystemArtifactStore:
    """A file-system artifact store for `url` (or in `directory` when given), its folder created if needed."""
    base = Path(directory) if directory is not None else artifacts_dir(url)
    base.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(base))


def attach_to_study(url: str, study: optuna.Study, path: str | Path, mimetype: str | None = None) -> str | None:
    """Upload a file (e.g. the exported best config) as an artifact of the study; returns its artifact id.

    Studies take artifacts at any time. A store that cannot be written is a logged warning and None: the file
    itself was written already.
    """
    try:
        return upload_artifact(
            artifact_store=artifact_store_for(url), file_path=str(path), study_or_trial=study, mimetype=mimetype
        )
    except OSError as exc:
        log.warning(
            "%s not attached to study %s (%s); set %s to a writable folder", path, study.study_name, exc, ARTIFACTS_ENV
        )
        return None


def upload_trial_artifacts(
    url: str, trial: optuna.Trial, config: TrainConfig, data: DataSet, result: TrainResult
) -> list[str]:
    """Evaluate the trained model on the val videos and attach a PSNR-per-frame plot and a frame strip.

    Also stores the mean PSNR per frame as the compact user attr `psnr_per_frame` (what `hpo report` plots).
    A store that cannot be written is logged as a warning: the trial's result stands without its pictures.

    Returns: the artifact ids uploaded.
    """
    ev = evaluate(result.model, data.val, config, keep_preds=True)
    mean_curve = ev.psnr_per_frame.mean(axis=0)  # (L-1,)
    trial.set_user_attr(PSNR_ATTR, [round(float(v), 3) if math.isfinite(v) else None for v in mean_curve])
    preds = ev.preds if ev.preds is not None else torch.empty(0)  # keep_preds=True always returns them
    ids: list[str] = []
    try:
        store = artifact_store_for(url)
        with tempfile.TemporaryDirectory(prefix="hpo-artifacts-") as tmp:
            plot = Path(tmp) / f"trial-{trial.number}-psnr-per-frame.png"
            strip = Path(tmp) / f"trial-{trial.number}-frames.png"
            psnr_plot_png(ev.psnr_per_frame, f"trial {trial.number}: val PSNR per frame").save(plot)
            frame_strip_png(data.val.frames[0, 1:], preds[0]).save(strip)
            for path in (plot, strip):
                ids.append(
                    upload_artifact(
                        artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="image/png"
                    )
                )
    except OSError as exc:
        log.warning("trial %d: artifacts not saved (%s); set %s to a writable folder", trial.number, exc, ARTIFACTS_ENV)
    return ids


# --- pictures ----------------------------------------------------------------------------------------------
# Drawn with PIL: plotly's static export needs kaleido and a browser, which a GPU worker does not have.

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
            tile = Image.fromarray(_to_uint8(video[i])).resize((cw, ch), Image.Resampling.NEAREST)
            img.paste(tile, (label_w + col * (cw + gap), head_h + row * (ch + gap)))
    for col, i in enumerate(picks):  # frame numbers of the video (frame 0 is the given first frame)
        draw.text((label_w + col * (cw + gap) + cw // 2, 2), str(i + 1), fill=_INK, font=font, anchor="mt")
    return img


def _to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 or float in [0, 1] -> (H, W, 3) uint8."""
    x = frame.detach().cpu()
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(1, 2, 0).contiguous().numpy()
