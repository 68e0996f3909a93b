"""Device, autocast and memory-format choices from a TrainConfig, and the CPU's runtime settings, in one place."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import sys
from collections.abc import Iterator

import torch

from model.config import TrainConfig
from model.errors import ConfigError


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


def autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for `config.amp` (bf16 on CPU or GPU, fp16 on GPU only); a no-op for "none"."""
    if config.amp == "none":
        return contextlib.nullcontext()
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp=fp16 needs a CUDA device: use amp=bf16 on the CPU")
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
