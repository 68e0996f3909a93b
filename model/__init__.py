"""The CVAE video-prediction model, its data and its trainer. Knows nothing of Optuna (DESIGN §2)."""

from model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from model.config import TrainConfig, load_config, parse_sets, to_toml
from model.data import DataSet, Videos, load_data
from model.errors import CheckpointError, ConfigError, DataError, DivergedError, UsageError
from model.net import CVAE
from model.schedules import kl_beta, teacher_forcing_ratio
from model.synth import make_synthetic, synthetic_data
from model.train import EvalResult, TrainResult, evaluate, train

__all__ = [
    "CVAE",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataSet",
    "DivergedError",
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "UsageError",
    "Videos",
    "evaluate",
    "kl_beta",
    "load_checkpoint",
    "load_config",
    "load_data",
    "make_synthetic",
    "model_from_checkpoint",
    "parse_sets",
    "save_checkpoint",
    "synthetic_data",
    "teacher_forcing_ratio",
    "to_toml",
    "train",
]
