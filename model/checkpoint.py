"""Checkpoints: model + optimizer + config + epoch + metrics (+ RNG states), written atomically,
loaded with `weights_only=True` (plain tensors, dicts, lists and numbers only)."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from model.config import TrainConfig, from_dict
from model.errors import CheckpointError, ConfigError
from model.net import CVAE

MODEL_SHAPE_FIELDS = ("f_dim", "l_dim", "n_dim", "d_out_dim")


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, write: Any) -> None:
    """Call write(file_object) on a temp file in the target dir, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint dict atomically. `state` holds "model", "optimizer", "config" (a dict), "epoch",
    "metrics" (per-epoch list) and optionally "scheduler", "rng", "stage"."""
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def save_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=float) + "\n")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; a missing or truncated file is a CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} not found: check the path (retrain writes last.pt and best.pt)")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is truncated or not a checkpoint ({type(exc).__name__}): "
            "re-create it or pick another"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {str(p)!r} lacks model weights or config: it was not written by vp-hpo")
    return state


def config_of(state: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a checkpoint carries."""
    try:
        return from_dict(dict(state["config"]))
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint config is invalid ({exc}): it was written by another version") from None


def model_from_checkpoint(state: dict[str, Any], expect: TrainConfig | None = None) -> CVAE:
    """Rebuild the CVAE from a checkpoint's own config and load its weights.

    With `expect`, a model-shape field that differs is a CheckpointError naming it.
    """
    config = config_of(state)
    if expect is not None:
        for name in MODEL_SHAPE_FIELDS:
            if getattr(expect, name) != getattr(config, name):
                raise CheckpointError(
                    f"checkpoint has {name}={getattr(config, name)} but the config asks for {getattr(expect, name)}: "
                    "use a checkpoint of the same model shape"
                )
    model = CVAE.from_config(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint weights do not fit the model ({first}): it is from another model shape"
        ) from None
    if config.channels_last:  # same memory format as in training, so outputs match bit for bit
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model
