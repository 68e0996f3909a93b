"""Trial and study artifacts: where they live, and the two images every finished trial gets.

Optuna keeps only references to artifacts in the storage; the files go to an artifact store. Ours is a
`FileSystemArtifactStore` whose folder follows from the storage URL, so `hpo run`, `hpo dashboard` and
`hpo export` agree on it without a flag:

- `$HPO_ARTIFACTS` when set (use it for PostgreSQL studies whose workers share a mounted folder);
- `sqlite:///DIR/NAME.db` -> `DIR/NAME-artifacts/` beside the database file (`hpo.db` -> `hpo-artifacts/`);
- a journal file `journal:///DIR/NAME.log` -> `DIR/NAME-artifacts/` likewise;
- any other URL (PostgreSQL, in-memory SQLite) -> `./hpo-artifacts/` in the working directory.

Artifacts attach to a trial only while it is RUNNING, so `upload_trial_artifacts` runs inside the objective
(its `after_train` hook), after training and before the trial is told its value.

See docs/ARCHITECTURE.md, "Outputs".
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

from model.config import TrainConfig
from model.dataset import DataSet
from model.media import frame_strip_png, psnr_plot_png
from model.train import TrainResult, evaluate

__all__ = [
    "ARTIFACTS_ENV",
    "PSNR_ATTR",
    "artifact_store_for",
    "artifacts_dir",
    "attach_to_study",
    "export_filename",
    "upload_trial_artifacts",
]

log = logging.getLogger(__name__)

ARTIFACTS_ENV = "HPO_ARTIFACTS"
PSNR_ATTR = "psnr_per_frame"  # user attr: mean over val videos of each predicted frame's PSNR, dB, 3 decimals


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


def attach_to_study(url: str, study: optuna.Study, filename: str, text: str, mimetype: str | None = None) -> str | None:
    """Attach `text` (e.g. the exported best config) to the study as artifact `filename`, once: a study that holds an
    artifact of that name already keeps it and gets no copy. Returns the artifact's id.

    Put what identifies the content in `filename` (`export_filename`): exporting the same config again then
    uploads nothing, and the dashboard lists each exported config once. Studies take artifacts at any time. A
    store that cannot be written is a logged warning and None: the output itself was written already.
    """
    for meta in get_all_artifact_meta(study):
        if meta.filename == filename:
            return meta.artifact_id
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-attach-") as tmp:
            path = Path(tmp) / filename
            path.write_text(text)
            return upload_artifact(
                artifact_store=artifact_store_for(url), file_path=str(path), study_or_trial=study, mimetype=mimetype
            )
    except OSError as exc:
        name = study.study_name
        log.warning("%s not attached to study %s (%s); set %s to a writable folder", filename, name, exc, ARTIFACTS_ENV)
        return None


def export_filename(trial_number: int, text: str) -> str:
    """The artifact name of an exported config: its trial and a hash of its text, so one content is one artifact."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"best-config-trial-{trial_number}-{digest}.toml"


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
