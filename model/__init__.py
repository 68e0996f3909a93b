"""The CVAE video-prediction model, its data and its trainer. Knows nothing of Optuna (DESIGN §2)."""

from model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from model.config import TrainConfig, load_config, parse_sets, to_toml
from model.errors import CheckpointError, ConfigError, DataError, DivergedError, UsageError
from model.net import CVAE
from model.schedules import kl_beta, teacher_forcing_ratio

__all__ = [
    "CVAE",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DivergedError",
    "TrainConfig",
    "UsageError",
    "kl_beta",
    "load_checkpoint",
    "load_config",
    "model_from_checkpoint",
    "parse_sets",
    "save_checkpoint",
    "teacher_forcing_ratio",
    "to_toml",
]
