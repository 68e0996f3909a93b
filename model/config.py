"""`TrainConfig`: the one dataclass holding every hyperparameter and run setting.

Field names are a contract: study specs, exported configs and `--set` use them.
Hyperparameters come first; run settings (never searched) are kept apart below.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import ConfigError

OPTIMIZERS = ("Adam", "AdamW", "SGD")
KL_ANNEAL_TYPES = ("Cyclical", "Monotonic", "None")
TF_GRANULARITIES = ("epoch", "batch")
AMP_MODES = ("none", "bf16", "fp16")
MAX_SEED = 2**32 - 1  # numpy's and Optuna's samplers' seed range; torch takes it too


@dataclass
class TrainConfig:
    # --- optimisation -----------------------------------------------------------
    lr: float = 1e-3  # learning rate of the main optimizer stage (> 0)
    optimizer: str = "Adam"  # Adam | AdamW | SGD
    weight_decay: float = 1e-5  # L2 weight decay of the main stage's optimizer
    momentum: float = 0.9  # SGD momentum of the main stage (ignored by Adam/AdamW)
    lr_milestones: list[int] = field(default_factory=list)  # epochs where MultiStepLR decays
    lr_gamma: float = 1.0  # MultiStepLR decay factor (1 = no decay; template: [2, 5], 0.1)
    batch_size: int = 2  # training clips per optimizer step
    epochs: int = 70  # training epochs of the main stage
    partial: float = 1.0  # fraction of the training clips used per epoch, in (0, 1]
    grad_clip: float = 1.0  # max gradient L2 norm (0 = no clipping)
    seed: int = 1  # seeds torch, numpy and python for the whole run
    # --- clip lengths and frame size ---------------------------------------------
    train_vi_len: int = 16  # frames per training clip (>= 2)
    val_vi_len: int = 630  # frames per validation video (>= 2)
    frame_h: int = 32  # frame height in pixels after resize
    frame_w: int = 64  # frame width in pixels after resize
    # --- model dims ---------------------------------------------------------------
    f_dim: int = 128  # frame-encoder output channels (multiple of 8)
    l_dim: int = 32  # pose-encoder output channels (even)
    n_dim: int = 12  # latent channels (multiple of 4)
    d_out_dim: int = 192  # decoder-fusion output channels (multiple of 8)
    # --- teacher forcing (docs/ARCHITECTURE.md, "Schedules") ----------------------------------------------
    tfr: float = 1.0  # initial teacher-forcing ratio, in [0, 1]
    tfr_sde: int = 10  # epoch at which the ratio starts to decay (>= 0)
    tfr_d_step: float = 0.1  # ratio lost per epoch after tfr_sde (>= 0)
    tf_granularity: str = "epoch"  # draw teacher forcing once per "epoch" or per "batch"
    feedback_clamp: bool = True  # without teacher forcing, feed back predictions clamped to [0, 1] as evaluation
    # does (False: the template's raw feedback, which can blow up to inf/NaN within one clip at large lr)
    # --- KL annealing (docs/ARCHITECTURE.md, "Schedules") -------------------------------------------------
    kl_anneal_type: str = "Cyclical"  # Cyclical | Monotonic | None
    kl_anneal_cycle: int = 10  # number of cycles over the run (M, >= 1)
    kl_anneal_ratio: float = 1.0  # share of a cycle spent ramping beta up (R, > 0)
    # --- optional second stage (report §4.4) --------------------------------------
    finetune_optimizer: str = "SGD"  # optimizer of the fine-tune stage
    finetune_epochs: int = 0  # epochs of the fine-tune stage after the main one (0 = off)
    finetune_lr: float = 1e-4  # learning rate of the fine-tune stage (> 0)
    finetune_momentum: float = 0.0  # SGD momentum of the fine-tune stage (0: plain SGD, as in the report)
    finetune_weight_decay: float = 0.0  # L2 weight decay of the fine-tune stage's optimizer (0 = off, the report's)
    # --- run settings (never searched) --------------------------------------------
    data: str = ""  # data set root in the lab layout; "" = the built-in synthetic set
    cache_dir: str = ""  # where the decoded uint8 cache lives; "" = next to the data
    synth_train_frames: int = 640  # training frames of the built-in synthetic set
    synth_val_videos: int = 1  # validation videos of the built-in synthetic set
    synth_seed: int = 1  # seed of the built-in synthetic set's dance (not `seed`: reruns keep the data)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # autocast dtype: none | bf16 | fp16 (fp16 on CUDA only)
    channels_last: bool = True  # use the channels_last memory format for conv maps
    compile: bool = False  # wrap the model in torch.compile
    time_chunk: int = 0  # samples per batched call over time (0 = auto: 8 on CPU, all on GPU)
    out: str = ""  # output dir for checkpoints and metrics; "" = write nothing
    keep_best: int = 3  # best checkpoints kept by val PSNR, as best-eNNNN.pt (best.pt is the best); 0 = best.pt only

    def validate(self) -> TrainConfig:
        """Check value ranges; raise ConfigError naming the field and the fix."""
        _check(self.lr > 0, "lr must be > 0 (e.g. --set lr=1e-3)")
        _check(self.finetune_lr > 0, "finetune_lr must be > 0")
        _check(0.0 <= self.tfr <= 1.0, f"tfr must be in [0, 1], got {self.tfr}")
        _check(self.tfr_d_step >= 0, "tfr_d_step must be >= 0")
        _check(self.tfr_sde >= 0, "tfr_sde must be >= 0")
        _check(self.kl_anneal_ratio > 0, f"kl_anneal_ratio must be > 0, got {self.kl_anneal_ratio}")
        _check(self.kl_anneal_cycle >= 1, "kl_anneal_cycle must be >= 1")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("finetune_optimizer", self.finetune_optimizer, OPTIMIZERS)
        _choice("kl_anneal_type", self.kl_anneal_type, KL_ANNEAL_TYPES)
        _choice("tf_granularity", self.tf_granularity, TF_GRANULARITIES)
        _choice("amp", self.amp, AMP_MODES)
        _check(self.epochs >= 1, "epochs must be >= 1")
        _check(self.finetune_epochs >= 0, "finetune_epochs must be >= 0")
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(0 < self.partial <= 1, "partial must be in (0, 1]")
        _check(self.train_vi_len >= 2, "train_vi_len must be >= 2")
        _check(self.val_vi_len >= 2, "val_vi_len must be >= 2")
        _check(self.frame_h >= 4 and self.frame_w >= 4, "frame_h and frame_w must be >= 4")
        _check(self.f_dim % 8 == 0 and self.f_dim > 0, "f_dim must be a positive multiple of 8")
        _check(self.d_out_dim % 8 == 0 and self.d_out_dim > 0, "d_out_dim must be a positive multiple of 8")
        _check(self.l_dim % 2 == 0 and self.l_dim > 0, "l_dim must be a positive even number")
        _check(self.n_dim % 4 == 0 and self.n_dim > 0, "n_dim must be a positive multiple of 4")
        _check(self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)")
        _check(self.time_chunk >= 0, "time_chunk must be >= 0 (0 = auto)")
        _check(self.lr_gamma > 0, "lr_gamma must be > 0")
        _check(self.synth_train_frames >= self.train_vi_len, "synth_train_frames must hold one clip")
        _check(self.synth_val_videos >= 1, "synth_val_videos must be >= 1")
        _check(self.keep_best >= 0, "keep_best must be >= 0 (0 = keep only best.pt and last.pt)")
        dev = self.device
        ok_dev = dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())
        _check(ok_dev, f"device must be auto, cpu, cuda or cuda:N, got {dev!r}")
        for name in (
            "lr",
            "tfr",
            "tfr_d_step",
            "kl_anneal_ratio",
            "weight_decay",
            "lr_gamma",
            "momentum",
            "finetune_lr",
            "finetune_momentum",
            "finetune_weight_decay",
        ):
            _check(math.isfinite(getattr(self, name)), f"{name} must be a finite number")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0 (0 = off), got {self.weight_decay}")
        _check(self.momentum >= 0, f"momentum must be >= 0 (0 = plain SGD), got {self.momentum}")
        _check(
            self.finetune_momentum >= 0, f"finetune_momentum must be >= 0 (0 = plain SGD), got {self.finetune_momentum}"
        )
        _check(
            self.finetune_weight_decay >= 0,
            f"finetune_weight_decay must be >= 0 (0 = off), got {self.finetune_weight_decay}",
        )
        _check(
            all(m >= 1 for m in self.lr_milestones),
            f"lr_milestones must be epochs >= 1, got {self.lr_milestones} (e.g. --set lr_milestones=[2,5])",
        )
        for name in ("seed", "synth_seed"):
            value = getattr(self, name)
            _check(0 <= value <= MAX_SEED, f"{name} must be in 0..{MAX_SEED}, got {value}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with `changes` applied (values type-checked like TOML)."""
        return from_dict({**self.to_dict(), **changes})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}: use one of {', '.join(allowed)}")


def field_types() -> dict[str, Any]:
    """Field name -> resolved type annotation (float, int, str, bool or list[int])."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _field_type(name: str, where: str = "") -> Any:
    """The type of field `name`; an unknown name is a ConfigError (`where` says where it was written)."""
    types = field_types()
    if name not in types:
        raise ConfigError(f"unknown config field {name!r}{where}: check the spelling (`hpo train --help` lists them)")
    return types[name]


def coerce(name: str, value: Any) -> Any:
    """Check one TOML value against the field's type; ints are accepted for floats."""
    kind = _field_type(name)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if typing.get_origin(kind) is list and isinstance(value, list):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
    raise ConfigError(f"field {name} expects {_type_name(kind)}, got {value!r}")


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        return "a list of integers"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}[kind]


def parse_value(name: str, text: str) -> Any:
    """Parse the VALUE of a `--set FIELD=VALUE` by the field's type."""
    kind = _field_type(name, " in --set")
    if kind is str:
        return text
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if typing.get_origin(kind) is list:  # allow the bare form --set lr_milestones=2,5
            try:
                value = [int(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise ConfigError(f"--set {name}={text}: expects {_type_name(kind)}") from None
        else:
            raise ConfigError(f"--set {name}={text}: expects {_type_name(kind)}") from None
    return coerce(name, value)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig; unknown keys and wrong types are ConfigError."""
    clean = {name: coerce(name, value) for name, value in values.items()}
    return TrainConfig(**clean).validate()


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`["lr=3e-4", "epochs=2"]` -> typed field values; raises ConfigError."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {item!r}: write FIELD=VALUE, e.g. --set epochs=3")
        out[name.strip()] = parse_value(name.strip(), text.strip())
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing file or syntax error is ConfigError with the line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found: check the path")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#x}): save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror or exc}): check its permissions") from None
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError has no lineno attribute; its message ends "(at line N, column M)".
        raise ConfigError(f"{p}: TOML syntax error: {exc}; fix that line") from None


def load_config(path: str | Path | None = None, sets: list[str] | None = None) -> TrainConfig:
    """TOML file (optional) + `--set` overrides -> validated TrainConfig."""
    values: dict[str, Any] = read_toml(path) if path else {}
    values.pop("hpo", None)  # exports may carry a provenance table; it is not a field
    values.update(parse_sets(sets))
    return from_dict(values)


def to_toml(config: TrainConfig, header: str = "") -> str:
    """Serialise every field, so the file alone reproduces the config."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name, value in config.to_dict().items():
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # repr round-trips floats exactly
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def fields_table() -> str:
    """Every TrainConfig field with its type and default: what `--set` and a config file may name."""
    types = field_types()
    rows = []
    for f in dataclasses.fields(TrainConfig):
        default: Any = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = getattr(types[f.name], "__name__", None) if not hasattr(types[f.name], "__args__") else None
        shown = "required" if default is dataclasses.MISSING else repr(default)
        rows.append((f.name, kind or str(types[f.name]), shown))
    width = max(len(name) for name, _, _ in rows)
    lines = [f"  {name:<{width}}  {kind:<9} {default}" for name, kind, default in rows]
    return "TrainConfig fields (--set FIELD=VALUE, or keys of the TOML file), type and default:\n" + "\n".join(lines)
