"""Decode PNGs once into a uint8 .npy cache that every later load memory-maps (docs/ARCHITECTURE.md, "Data").

A cache file holds the decoded, resized images of one ordered file list as (N, 3, H, W) uint8. Its name
carries a key hashed from the files' names, sizes and mtimes and the frame size, so any change selects a
new file and the stale one is removed. It is built under a file lock into a temporary file and renamed
into place, so processes starting together build it once and never read a half-written one.

Decoding runs in a process pool for large file lists: PIL's per-file work holds the GIL, so threads do
not help, and workers write straight into the memory-mapped output, so nothing large is pickled.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
import os
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from model.errors import DataError

__all__ = ["ImageFile", "cache_key", "decode_image", "decode_to_file", "find_bad_files", "image_files", "load_cached"]

logger = logging.getLogger(__name__)

# Bump when the decoded content changes (resampling, layout): the key changes, so an old cache is never read,
# and the next build removes it. 2: the lab pipeline's resize (no reducing_gap), see decode_image.
VERSION = 2
POOL_MIN_FILES = 1000  # below this a process pool costs more to start than it saves
MAX_WORKERS = 8
# What PIL raises on a truncated, corrupt or non-image file.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageFile:
    """One image of a data set with the stat fields that key the cache (taken once, at scan time)."""

    path: str  # full path
    rel: str  # path relative to the data root, as recorded in the key (the root may move)
    size: int
    mtime_ns: int

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def image_files(root: Path, rel_folder: str) -> dict[str, ImageFile]:
    """File name -> ImageFile for every .png in root/rel_folder (one scandir, one stat per file).

    Raises:
        DataError: the folder or a .png in it cannot be read (a symbolic link loop, no permission).
    """
    out: dict[str, ImageFile] = {}
    path = root / rel_folder
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.name.lower().endswith(".png") and entry.is_file():
                    st = entry.stat()
                    out[entry.name] = ImageFile(entry.path, f"{rel_folder}/{entry.name}", st.st_size, st.st_mtime_ns)
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc}): fix or remove it") from None
    return out


def cache_key(files: Sequence[ImageFile], size: tuple[int, int]) -> str:
    """Hash of the files' names (relative to the root), sizes and mtimes, and the frame size (H, W)."""
    lines = [f"v{VERSION} {size[0]}x{size[1]}"] + [f"{f.rel}\t{f.size}\t{f.mtime_ns}" for f in files]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]


def decode_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """One image file -> uint8 (3, H, W) RGB, resized exactly as the lab pipeline resizes.

    The lab loads a frame with torchvision's `default_loader` (PIL, `convert("RGB")`) and resizes it with
    `transforms.Resize((H, W))`, which on a PIL image is `img.resize((W, H), BILINEAR)`: PIL's antialiased
    bilinear filter over the whole source, no `reducing_gap`. A reducing gap (a box-filter pre-reduction)
    is faster but gives other pixels once the downscale is 6x or more (3-9 grey levels on 240x320 to
    720x1280 sources), and the frames behind `submission.csv` go through this. Its cost (2.5 ms instead of
    1 ms for a 720x1280 image, measured here) is paid once per data set, in the cache build.

    Raises whatever PIL raises on a bad file (see DECODE_ERRORS).
    """
    h, w = size
    with Image.open(path) as im:
        im.load()  # the full decode: corrupt data fails here
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        if rgb.size != (w, h):  # torchvision returns an image of the asked size unchanged too
            rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(rgb).transpose(2, 0, 1)


def _decode_range(paths: list[str], out_path: str, start: int, size: tuple[int, int]) -> list[tuple[int, str]]:
    """Decode paths into rows start.. of the .npy at out_path; returns (index, reason) of failures."""
    out = np.load(out_path, mmap_mode="r+")
    errors: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            out[start + i] = decode_image(path, size)
        except DECODE_ERRORS as exc:
            errors.append((start + i, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    out.flush()
    del out
    return errors


def decode_to_file(
    files: Sequence[str | os.PathLike[str]], size: tuple[int, int], out_path: Path
) -> list[tuple[int, str]]:
    """Decode `files` into a new (N, 3, H, W) uint8 .npy at out_path, in a process pool when there are many.

    Workers write straight into the memory-mapped file, so nothing large is pickled between processes.

    Returns:
        (index into files, reason) for every file that could not be decoded; [] when all were.
    """
    arr = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8, shape=(len(files), 3, *size))
    del arr  # header written; the workers reopen it
    names = [os.fspath(f) for f in files]
    workers = min(MAX_WORKERS, _cpu_count(), math.ceil(len(files) / (POOL_MIN_FILES // 2)))
    if len(files) < POOL_MIN_FILES or workers < 2:
        return _decode_range(names, str(out_path), 0, size)
    step = math.ceil(len(files) / (workers * 4))  # a few chunks per worker evens out slow files
    errors: list[tuple[int, str]] = []
    with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
        jobs = [
            pool.submit(_decode_range, names[i : i + step], str(out_path), i, size) for i in range(0, len(names), step)
        ]
        for job in jobs:
            errors.extend(job.result())
    return sorted(errors)


def find_bad_files(files: Sequence[str | os.PathLike[str]], size: tuple[int, int]) -> list[tuple[int, str]]:
    """Decode `files` into a scratch file only to find those that fail (no cache is written)."""
    with tempfile.TemporaryDirectory(prefix="hpo-decode-") as tmp:
        return decode_to_file(files, size, Path(tmp) / "scratch.npy")


def load_cached(
    files: Sequence[ImageFile], cache_dir: Path, tag: str, size: tuple[int, int]
) -> tuple[np.ndarray | None, list[tuple[int, str]]]:
    """The decoded (N, 3, H, W) uint8 images of `files`, from the cache or decoded now and cached.

    The array is a copy-on-write memory map of the cache file: processes on one machine share its pages.

    Returns:
        (array, []) on success, or (None, failures) when some files could not be decoded (nothing cached).

    Raises:
        DataError: the cache folder cannot be written.
    """
    key = cache_key(files, size)
    stem = f"{tag}-{size[0]}x{size[1]}"
    path = cache_dir / f"{stem}-{key}.npy"
    arr = _open(path, len(files), size)
    if arr is not None:
        logger.debug("decode cache hit: %s", path)
        return arr, []
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(cache_dir / f"{stem}.lock"):
            arr = _open(path, len(files), size)  # another process may have built it while we waited
            if arr is not None:
                return arr, []
            return _build(files, path, stem, size)
    except OSError as exc:
        raise DataError(
            f"cannot write the decode cache in {cache_dir} ({exc.strerror or exc}): "
            "make it writable or point cache_dir elsewhere (--set cache_dir=DIR)"
        ) from None


def _build(
    files: Sequence[ImageFile], path: Path, stem: str, size: tuple[int, int]
) -> tuple[np.ndarray | None, list[tuple[int, str]]]:
    """Decode into a temp file and rename it into place; remove stale caches of the same stem."""
    for old in path.parent.glob(f"{stem}-*.npy*"):
        if old != path:  # older keys and temp files of crashed builds; nobody else builds under our lock
            old.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    started = time.perf_counter()
    logger.info("decoding %d images into %s", len(files), path)
    try:
        errors = decode_to_file(files, size, tmp)
        if errors:
            tmp.unlink(missing_ok=True)
            return None, errors
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # the rename must never expose a file whose data is not on disk
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("decoded %d images in %.1f s", len(files), time.perf_counter() - started)
    arr = _open(path, len(files), size)
    if arr is None:
        raise DataError(f"decode cache {path} was written but cannot be read back: check the disk, then retry")
    return arr, []


def _open(path: Path, n: int, size: tuple[int, int]) -> np.ndarray | None:
    """Memory-map a cache file; None if it is missing or not the expected array."""
    try:
        arr = np.load(path, mmap_mode="c")
    except (OSError, ValueError):
        return None
    if arr.dtype != np.uint8 or arr.shape != (n, 3, *size):
        return None
    return arr


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork on Linux: workers start at once and callers need no `if __name__ == "__main__"` guard. It is
    safe here because the workers run only PIL and numpy code, never torch (whose thread pools are what
    fork can leave locked); spawn elsewhere (importing `model` there costs a torch import per worker).
    """
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
