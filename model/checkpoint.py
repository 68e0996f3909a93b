"""Checkpoints: model + optimizer + config + epoch + metrics (+ RNG states), written atomically,
loaded with `weights_only=True` (plain tensors, dicts, lists and numbers only)."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, cast

import torch

from model.config import TrainConfig, from_dict
from model.errors import CheckpointError, ConfigError, UsageError
from model.net import CVAE

MODEL_SHAPE_FIELDS = ("f_dim", "l_dim", "n_dim", "d_out_dim")


_UMASK = os.umask(0)
os.umask(_UMASK)


class WriteError(UsageError, OSError):
    """A file could not be written (a full disk, no permission): one line naming the file and the fix.

    Still an OSError (errno, strerror, filename), so a caller with a message of its own catches it as before.
    """

    def __init__(self, exc: OSError, path: Path) -> None:
        super().__init__(exc.errno, exc.strerror, str(path))
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "its disk is full: free space on it, or write to another disk (--out or --set out=DIR)"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "it is not writable: fix the folder's permissions, or write elsewhere (--out or --set out=DIR)"
        else:
            fix = "check the folder and its disk, or write elsewhere (--out or --set out=DIR)"
        self.message = f"cannot write {str(path)!r} ({exc.strerror or exc}): {fix}"

    def __str__(self) -> str:
        return self.message


def atomic_write_bytes(path: str | Path, write: Any) -> None:
    """Call write(file_object) on a temp file in the target dir, fsync, then rename over `path`.

    Raises:
        WriteError: the folder or file cannot be written (full disk, permissions); nothing is left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the mode a plain open() would
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(exc, path) from exc
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint dict atomically. `state` holds "model", "optimizer", "config" (a dict), "epoch",
    "metrics" (per-epoch list) and optionally "scheduler", "rng", "stage"."""
    # Serialised in memory first: torch.save's zip writer turns a full disk into a RuntimeError ("unexpected
    # pos"), where a plain write raises the OSError (ENOSPC) that names the problem.
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, lambda f: f.write(buf.getbuffer()))


def save_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=float) + "\n")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; a missing or truncated file is a CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} not found: check the path (retrain writes last.pt and best.pt)")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is truncated or not a checkpoint ({type(exc).__name__}): "
            "re-create it or pick another"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {str(p)!r} lacks model weights or config: it was not written by vp-hpo")
    weights = state["model"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CheckpointError(f"checkpoint {str(p)!r} holds model weights that are not named tensors: {_NOT_OURS}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"checkpoint {str(p)!r} holds a config that is not a table of fields: {_NOT_OURS}")
    return state


_NOT_OURS = "it was not written by vp-hpo (or was edited); re-create it or pick another"


def check_resumable(state: dict[str, Any], path: str | Path) -> None:
    """Check a loaded checkpoint has what continuing its run needs (epoch, metrics, optimizer, RNG states).

    Raises:
        CheckpointError: a part is missing or of the wrong kind, naming it.
    """
    where = f"checkpoint {str(path)!r} cannot be resumed"
    fix = "start a new --out (or re-create the checkpoint)"
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{where}: its epoch is {epoch!r}, not a whole number >= 0: {fix}")
    parts: dict[str, tuple[type, tuple[str, ...]]] = {
        "metrics": (list, ()),
        "optimizer": (dict, ("state", "param_groups")),
        "rng": (dict, ("cpu", "device")),
    }
    if "stage" in state:
        parts["scheduler"] = (dict, ())
    for key, (kind, inner) in parts.items():
        value = state.get(key)
        if not isinstance(value, kind) or any(k not in cast(dict, value) for k in inner):
            what = f"a {kind.__name__}" + (f" with {', '.join(inner)}" if inner else "")
            raise CheckpointError(f"{where}: its {key!r} is missing or not {what}: {fix}")
    if not all(isinstance(state["rng"][k], torch.Tensor) for k in ("cpu", "device")):
        raise CheckpointError(f"{where}: its RNG states are not tensors: {fix}")
    if not all(isinstance(m, dict) for m in state["metrics"]) or len(state["metrics"]) != epoch + 1:
        raise CheckpointError(f"{where}: its metrics do not list one dict per epoch up to epoch {epoch}: {fix}")


def config_of(state: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a checkpoint carries."""
    try:
        return from_dict(dict(state["config"]))
    except (ConfigError, TypeError, ValueError) as exc:
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
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint weights do not fit the model ({first}): it is from another model shape"
        ) from None
    if config.channels_last:  # same memory format as in training, so outputs match bit for bit
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model
