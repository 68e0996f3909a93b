"""The CVAE video-prediction model, its data and its trainer. Knows nothing of Optuna (DESIGN §2).

Public names are imported lazily (PEP 562): `import model.errors` from the CLI must not pay torch's
~1.5 s import in processes that only print an error or a status table.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_checkpoint": "model.checkpoint",
    "model_from_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "TrainConfig": "model.config",
    "load_config": "model.config",
    "parse_sets": "model.config",
    "to_toml": "model.config",
    "DataSet": "model.data",
    "Videos": "model.data",
    "load_data": "model.data",
    "CheckpointError": "model.errors",
    "ConfigError": "model.errors",
    "DataError": "model.errors",
    "DivergedError": "model.errors",
    "UsageError": "model.errors",
    "CVAE": "model.net",
    "kl_beta": "model.schedules",
    "teacher_forcing_ratio": "model.schedules",
    "make_synthetic": "model.synth",
    "synthetic_data": "model.synth",
    "EvalResult": "model.train",
    "TrainResult": "model.train",
    "evaluate": "model.train",
    "train": "model.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
