"""Device, autocast and memory-format choices from a TrainConfig, and the CPU's runtime settings, in one place."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from model.config import TrainConfig
from model.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available else cpu; an unavailable cuda device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPUs): pick a lower index")
    return device


def check_device_settings(config: TrainConfig, device: torch.device) -> None:
    """The settings that depend on the device the config resolved to; a ConfigError names the fix."""
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"amp=fp16 needs a CUDA device, this run is on {device.type}: use amp=bf16 or amp=none there")


def autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for `config.amp` (bf16 on CPU or GPU, fp16 on GPU only); a no-op for "none"."""
    if config.amp == "none":
        return contextlib.nullcontext()
    check_device_settings(config, device)
    dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


_FTZ_DEPTH = 0  # open `flush_denormals` blocks: torch has a setter for the flag but no getter


@contextlib.contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """On the CPU, treat denormal floats as zero while the block runs; a no-op elsewhere.

    Some activations and gradients decay into the denormal range, where x86 arithmetic is many times slower.
    `bench/ab_trainer_step.py` (fp32, teacher forcing, default dims): 7.88 -> 7.37 s a training step. The flag is
    process-wide, so it is set for the outermost block only and cleared (torch's default) when that ends.
    """
    global _FTZ_DEPTH
    if device.type != "cpu":
        yield
        return
    if _FTZ_DEPTH == 0:
        torch.set_flush_denormal(True)
    _FTZ_DEPTH += 1
    try:
        yield
    finally:
        _FTZ_DEPTH -= 1
        if _FTZ_DEPTH == 0:
            torch.set_flush_denormal(False)


# glibc's mallopt parameters (<malloc.h>) and its largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def on_glibc() -> bool:
    """Linux with glibc's malloc, the allocator `keep_freed_memory` tunes."""
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees for the next step; True if it was set.

    A training step allocates and frees gigabytes of activations. glibc returns freed memory at the top of its
    heap to the kernel once more than its trim threshold is free, so the next step faults every page in again
    (zero-filled by the kernel): the batched trainer step took ~160k page faults and ~1.6 CPU-s in the kernel a
    step at default dims, 15-20% of its time (bench/RESULTS.md). torch's CPU allocator has no caching setting,
    and swapping in jemalloc/tcmalloc needs LD_PRELOAD before the process starts, so this sets glibc's own
    knobs: blocks up to 32 MiB come from the heap (the fixed threshold glibc's dynamic one grows to), and the
    heap is never trimmed. Process-wide and for good: the process keeps its peak heap, as a caching allocator
    would. A no-op off glibc (macOS, musl).
    """
    if not on_glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the running process's own libc
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def time_chunk(config: TrainConfig, device: torch.device) -> int:
    """Samples per batched call over time.

    On the CPU, chunks of 8 keep full-size (32x64, default dims) feature maps in cache (docs/ARCHITECTURE.md,
    "Model"); small frames fit anyway, and one call is cheaper there. On a GPU the whole clip goes in one call.
    """
    if config.time_chunk:
        return config.time_chunk
    return 8 if device.type == "cpu" and config.frame_h * config.frame_w >= 32 * 64 else 0


def to_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [0, 1] on `device`, channels_last for the conv layers when asked."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    if channels_last:
        # channels_last is defined for 4-D tensors; a 5-D clip keeps the same strides per frame.
        flat = x.flatten(0, x.dim() - 4).contiguous(memory_format=torch.channels_last)
        x = flat.view(x.shape) if x.dim() == 4 else flat.unflatten(0, x.shape[:-3])
    return x


# --- the cores of a machine shared by its workers --------------------------------------------------------------
# Each worker process holds an exclusive flock on one slot file in this folder for its lifetime (the kernel drops
# it when the process ends, kill -9 included), so the held slots are the workers running on this machine now.
THREADS_ENV = "HPO_TORCH_THREADS"
_SLOTS = 256
_slot: tuple[int, int] | None = None  # (slot index, fd) held by this process
_torch_default: int | None = None  # torch's own thread count, before any worker changed it


def slots_dir() -> Path:
    """Where this user's workers on this machine hold their slots."""
    return Path(tempfile.gettempdir()) / f"hpo-workers-{os.getuid() if hasattr(os, 'getuid') else 0}"


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_setting(flag: int | None = None) -> int | None:
    """The torch thread count asked for: `flag` (--threads), else $HPO_TORCH_THREADS; None = split the cores.

    0 means torch's own default (every worker uses all cores, as before workers split them).

    Raises:
        ConfigError: a negative count, or an environment value that is not a whole number.
    """
    if flag is None:
        text = os.environ.get(THREADS_ENV, "").strip()
        if not text:
            return None
        if not re.fullmatch(r"\d+", text):
            raise ConfigError(
                f"{THREADS_ENV}={text!r} is not a whole number: set it to N >= 1 threads, 0 for torch's default, "
                "or unset it to split the cores between the workers"
            )
        flag = int(text)
    if flag < 0:
        raise ConfigError(f"--threads must be >= 0 (0 = torch's default), got {flag}")
    return flag


def _take_slot(folder: Path) -> tuple[int, int] | None:
    import fcntl

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for i in range(_SLOTS):
        fd = os.open(folder / f"slot{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return i, fd
    return None


def _held_slots(folder: Path, mine: int) -> list[int]:
    """The slots held now (this process's included): one per worker running on this machine."""
    import fcntl

    held = [mine]
    for i in range(_SLOTS):
        path = folder / f"slot{i}.lock"
        if i == mine or not path.exists():
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.append(i)  # a live worker holds it
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return sorted(held)


def core_share(cpus: int, workers: int, rank: int) -> int:
    """Threads of the worker ranked `rank` of `workers` on `cpus` cores: an even split, low ranks get the rest."""
    return max(1, cpus // workers + (1 if rank < cpus % workers else 0))


def share_cores(setting: int | None = None) -> int:
    """Set torch's intra-op threads for this worker before a trial; returns the count set.

    `setting` (from `threads_setting`): N uses N threads, 0 torch's own default, None splits this machine's
    cores evenly between the hpo workers running on it now, never above torch's default (so a lone worker runs
    exactly as before). Several workers each using every core oversubscribe the CPU: on 2 cores, 3 workers'
    trials ran several times slower than 1 worker's (bench/RESULTS.md, "Workers sharing a machine"). Called
    before every trial, so the split follows workers that start or stop.
    """
    global _slot, _torch_default
    if _torch_default is None:
        _torch_default = torch.get_num_threads()
    if setting is not None:
        threads = setting or _torch_default
    else:
        try:
            if _slot is None:
                _slot = _take_slot(slots_dir())
            held = _held_slots(slots_dir(), _slot[0]) if _slot is not None else []
        except (OSError, ImportError) as exc:  # no writable temp folder, or no flock (Windows): do not split
            log.debug("cannot count the workers on this machine (%s): torch's default threads", exc)
            held = []
        if _slot is None or not held:
            threads = _torch_default
        else:
            threads = min(_torch_default, core_share(cpu_count(), len(held), held.index(_slot[0])))
            log.debug("%d hpo workers on %d cores: %d torch threads here", len(held), cpu_count(), threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
