"""Data sets in the lab layout (docs/ARCHITECTURE.md, "Data"): scan, validate, decode once, serve uint8 tensors.

    ROOT/train/train_img/frameN.png   ROOT/train/train_label/frameN.png   (pose image of the same name)
    ROOT/val/val_img/frameN.png       ROOT/val/val_label/frameN.png
    ROOT/test/test_img/K/<one png>    ROOT/test/test_label/K/frameN.png   (optional: first frame + poses)

Frames sort by the last number in their name; a frame whose name has none is a problem. Images are decoded
and resized once into a cache (model.datacache); training reads only that cache. `config.data == ""` selects
the synthetic set.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import TrainConfig
from model.datacache import ImageFile, find_bad_files, image_files, load_cached
from model.dataset import DataSet, Videos
from model.errors import DataError
from model.synth import synthetic_data
from model.words import plural

__all__ = ["DataCache", "Layout", "check_data", "check_layout", "frame_key", "load_data", "scan", "summary"]

logger = logging.getLogger(__name__)

MAX_LISTED = 5  # per kind of problem and split, so a badly broken set does not flood the terminal
CACHE_SUBDIR = ".hpo-cache"


@dataclass
class Layout:
    """The files of a data set, in order, as found on disk (nothing decoded)."""

    root: Path
    train: list[tuple[ImageFile, ImageFile]] = field(default_factory=list)  # (frame, pose) pairs
    val: list[tuple[ImageFile, ImageFile]] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)
    test_first: list[ImageFile] = field(default_factory=list)  # one per test video
    test_poses: list[list[ImageFile]] = field(default_factory=list)  # P per test video


_NUMBER = re.compile(r"\d+")


def frame_key(name: str) -> tuple[int, int, str]:
    """Sort key: the last number in the name (frame2 < frame10); names without one sort last, by text."""
    numbers = _NUMBER.findall(name.rsplit(".", 1)[0])
    return (0, int(numbers[-1]), name) if numbers else (1, 0, name)


def _unnumbered(files: dict[str, ImageFile], what: str) -> list[str]:
    """A line per frame file whose name has no number: its place in the video would be a guess."""
    return [
        f"{files[n]} has no frame number in its name: rename it frameN.png (N = its place in the video) or remove "
        f"it{what}"
        for n in sorted(files)
        if frame_key(n)[0]
    ]


def _files(root: Path, rel_folder: str, problems: list[str]) -> dict[str, ImageFile]:
    """`image_files`, with a file that cannot be read (a symlink loop, a dangling link) as a problem."""
    try:
        return image_files(root, rel_folder)
    except DataError as exc:
        problems.append(str(exc))
        return {}


def _folder_problem(path: Path, why: str, fix: str) -> str | None:
    """None when path is a folder; else why it is not (a link that leads nowhere is named as one)."""
    if path.is_dir():
        return None
    if path.is_symlink():
        return f"{path}: a symbolic link that leads to no folder (a loop or a missing target): fix or remove the link"
    return f"{path}: {'not a folder' if path.exists() else 'folder not found'} ({why}): {fix}"


def _listed(problems: list[str], lines: list[str]) -> None:
    problems.extend(lines[:MAX_LISTED])
    if len(lines) > MAX_LISTED:
        problems.append(f"... and {len(lines) - MAX_LISTED} more like the above")


def _missing_folders(root: Path, folders: list[str], why: str, fix: str) -> list[str]:
    return [line for d in folders if (line := _folder_problem(root / d, why, fix)) is not None]


def _scan_pairs(root: Path, split: str, problems: list[str]) -> list[tuple[ImageFile, ImageFile]] | None:
    """Pair split_img/NAME with split_label/NAME; every unpaired file is a problem. None: folders missing."""
    img_dir, label_dir = f"{split}/{split}_img", f"{split}/{split}_label"
    missing = _missing_folders(
        root,
        [img_dir, label_dir],
        f"the {split} split needs {img_dir} and {label_dir}",
        "add it or point --data at a set in the lab layout",
    )
    if missing:
        problems.extend(missing)
        return None
    imgs, labels = _files(root, img_dir, problems), _files(root, label_dir, problems)
    _listed(problems, _unnumbered(imgs, " with its pose image") + _unnumbered(labels, " with its frame"))
    lonely_imgs = sorted(imgs.keys() - labels.keys(), key=frame_key)
    lonely_labels = sorted(labels.keys() - imgs.keys(), key=frame_key)
    _listed(
        problems,
        [f"{imgs[n]} has no pose image {root / label_dir / n}: add it or remove the frame" for n in lonely_imgs],
    )
    _listed(
        problems,
        [f"{labels[n]} has no frame {root / img_dir / n}: add it or remove the pose image" for n in lonely_labels],
    )
    return [(imgs[n], labels[n]) for n in sorted(imgs.keys() & labels.keys(), key=frame_key)]


def _scan_test(root: Path, layout: Layout, problems: list[str]) -> None:
    """Fill layout.test_* from ROOT/test (optional: an absent folder means no test split)."""
    test = root / "test"
    if not test.exists():
        return
    missing = _missing_folders(
        root,
        ["test/test_img", "test/test_label"],
        "a test split needs test_img/K and test_label/K",
        f"add it or remove {test}",
    )
    if missing:
        problems.extend(missing)
        return
    img_dir, label_dir = test / "test_img", test / "test_label"
    img_ids = {p.name for p in img_dir.iterdir() if p.is_dir()}
    label_ids = {p.name for p in label_dir.iterdir() if p.is_dir()}
    lines = [f"{img_dir / k} has no poses {label_dir / k}: add them or remove the video" for k in img_ids - label_ids]
    lines += [
        f"{label_dir / k} has no first frame {img_dir / k}: add it or remove the video" for k in label_ids - img_ids
    ]
    _listed(problems, sorted(lines))
    ids = sorted(img_ids & label_ids, key=frame_key)
    if not ids and not lines:
        problems.append(f"{img_dir} holds no test videos: add folders K/ with a first frame or remove {test}")
    for k in ids:
        firsts = _files(root, f"test/test_img/{k}", problems)
        poses = _files(root, f"test/test_label/{k}", problems)
        if not firsts:
            problems.append(f"{img_dir / k} has no first frame (a png): add it or remove the video")
            continue
        if not poses:
            problems.append(f"{label_dir / k} has no pose images: add them or remove the video")
            continue
        _listed(problems, _unnumbered(poses, ""))
        first = firsts[min(firsts, key=frame_key)]
        if len(firsts) > 1:
            logger.warning("%s holds %d pngs; using %s as the first frame", img_dir / k, len(firsts), first)
        if layout.test_poses and len(poses) != len(layout.test_poses[0]):
            problems.append(
                f"{label_dir / k} has {len(poses)} poses but {label_dir / layout.test_ids[0]} has "
                f"{len(layout.test_poses[0])}: every test video needs the same number of poses"
            )
            continue
        layout.test_ids.append(k)
        layout.test_first.append(first)
        layout.test_poses.append([poses[n] for n in sorted(poses, key=frame_key)])


def scan(root: str | Path, config: TrainConfig) -> tuple[Layout, list[str]]:
    """Find and pair every file of the data set at root; returns the layout and the problems found."""
    root = Path(root).expanduser()
    if not root.is_dir():
        if root.is_symlink():
            what = "is a symbolic link that leads to no folder (a loop or a missing target)"
        else:
            what = "is not a folder" if root.exists() else "not found"
        return Layout(root), [f'data dir {root} {what}: check the path (data = "" selects the synthetic set)']
    problems: list[str] = []
    layout = Layout(root.resolve())
    train, val = _scan_pairs(layout.root, "train", problems), _scan_pairs(layout.root, "val", problems)
    layout.train, layout.val = train or [], val or []
    _scan_test(layout.root, layout, problems)
    for split, pairs, need, name in (
        ("train", train, config.train_vi_len, "train_vi_len"),
        ("val", val, config.val_vi_len, "val_vi_len"),
    ):
        if pairs is not None and len(pairs) < need:
            problems.append(
                f"{layout.root / split} has {len(pairs)} frame/pose pairs, fewer than one "
                f"{'training clip' if split == 'train' else 'validation video'} ({name}={need}): "
                f"add frames or lower it (--set {name}=N)"
            )
    return layout, problems


def cache_location(root: Path, config: TrainConfig) -> Path:
    """ROOT/.hpo-cache, or a folder per data set under config.cache_dir."""
    if not config.cache_dir:
        return root / CACHE_SUBDIR
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    return Path(config.cache_dir).expanduser() / f"{root.name}-{tag}"


def _split_groups(layout: Layout) -> dict[str, list[ImageFile]]:
    """Cache tag -> the ordered files decoded into that cache (frames first, then poses)."""
    groups = {
        "train": [f for f, _ in layout.train] + [p for _, p in layout.train],
        "val": [f for f, _ in layout.val] + [p for _, p in layout.val],
    }
    if layout.test_ids:
        groups["test"] = layout.test_first + [p for poses in layout.test_poses for p in poses]
    return groups


def _decoded(layout: Layout, config: TrainConfig, problems: list[str]) -> dict[str, np.ndarray]:
    """Each split's decoded (N, 3, H, W) uint8 array; undecodable files are appended to problems."""
    size = (config.frame_h, config.frame_w)
    cache = cache_location(layout.root, config)
    out: dict[str, np.ndarray] = {}
    for tag, files in _split_groups(layout).items():
        arr, bad = load_cached(files, cache, tag, size)
        _listed(problems, [_bad_line(files[i], why) for i, why in bad])
        if arr is not None:
            out[tag] = arr
    return out


def _bad_line(path: ImageFile, why: str) -> str:
    return f"{path} is not a readable image ({why}): re-export or replace it, or remove it with its pair"


def check_data(root: str | Path, config: TrainConfig | None = None) -> list[str]:
    """Validate the data set at root; one line per problem, [] when it loads cleanly.

    Every file is decoded (or found in a valid decode cache), so corrupt images are named too.
    A clean set leaves its decode cache built for the config's frame size.
    """
    config = config or TrainConfig()
    layout, problems = scan(root, config)
    if not layout.root.is_dir():
        return problems
    if problems:  # do not cache a broken set, but still name every file that does not decode
        size = (config.frame_h, config.frame_w)
        for files in _split_groups(layout).values():
            _listed(problems, [_bad_line(files[i], why) for i, why in find_bad_files(files, size)])
        return problems
    try:
        _decoded(layout, config, problems)
    except DataError as exc:
        problems.append(str(exc))
    return problems


def check_layout(config: TrainConfig) -> None:
    """Find the problems of config.data's layout without decoding anything (a no-op for the synthetic set).

    Raises:
        DataError: the folder is missing, empty, unpaired, has unnumbered frames or too few of them; the
            message names the first problem and, when there are more, `hpo data check`.
    """
    if config.data:
        _, problems = scan(config.data, config)
        if problems:
            raise DataError(_one_line(problems, Path(config.data)))


def summary(root: str | Path, config: TrainConfig | None = None) -> str:
    """`N train frames (C clips), M val frames (V videos), K test videos` of a valid set (no decoding)."""
    config = config or TrainConfig()
    layout, _ = scan(root, config)
    n_train, n_val = len(layout.train), len(layout.val)
    return (
        f"{plural(n_train, 'train frame')} ({plural(n_train // config.train_vi_len, 'clip')}), "
        f"{plural(n_val, 'val frame')} ({plural(n_val // config.val_vi_len, 'video')}), "
        f"{plural(len(layout.test_ids), 'test video')}"
    )


def _one_line(problems: list[str], root: Path) -> str:
    more = len([p for p in problems if not p.startswith("... and")]) - 1
    return problems[0] + (f" (and {more} more problems: run `hpo data check {root}`)" if more > 0 else "")


def _videos(arr: np.ndarray, length: int) -> Videos:
    """(2N, 3, H, W) frames-then-poses -> Videos of N // length consecutive runs (the tail is dropped)."""
    frames, poses = np.split(arr, 2)
    n = frames.shape[0] // length * length
    shape = (-1, length, *frames.shape[1:])
    return Videos(torch.from_numpy(frames[:n]).view(shape), torch.from_numpy(poses[:n]).view(shape))


def load_data(config: TrainConfig) -> DataSet:
    """The data set config.data names (lab layout), or the synthetic set when config.data is "".

    Raises:
        DataError: the set is missing, malformed or too small; the message names the first problem.
    """
    if not config.data:
        return synthetic_data(config)
    layout, problems = scan(config.data, config)
    if problems:
        raise DataError(_one_line(problems, Path(config.data)))
    arrays = _decoded(layout, config, problems)
    if problems:
        raise DataError(_one_line(problems, Path(config.data)))
    train, val = _videos(arrays["train"], config.train_vi_len), _videos(arrays["val"], config.val_vi_len)
    for name, n_used, n_all in (
        ("train", train.frames.shape[:2].numel(), len(layout.train)),
        ("val", val.frames.shape[:2].numel(), len(layout.val)),
    ):
        if n_used < n_all:
            logger.info("%s: %d trailing frames do not fill a clip/video and are unused", name, n_all - n_used)
    test_first = test_poses = None
    if "test" in arrays:
        k = len(layout.test_ids)
        first, poses = arrays["test"][:k], arrays["test"][k:]
        test_first = torch.from_numpy(first)
        test_poses = torch.from_numpy(poses).view(k, -1, *poses.shape[1:])
    logger.info(
        "loaded %s: %d train clips, %d val videos, %d test videos",
        layout.root,
        len(train.frames),
        len(val.frames),
        len(layout.test_ids),
    )
    return DataSet(train, val, test_first, test_poses, list(layout.test_ids), str(layout.root))


# Fields that change what load_data returns; configs that agree on them share one in-memory data set.
_DATA_FIELDS = (
    "data",
    "cache_dir",
    "frame_h",
    "frame_w",
    "train_vi_len",
    "val_vi_len",
    "synth_train_frames",
    "synth_val_videos",
    "synth_seed",
)


class DataCache:
    """Load each distinct data set once per process (every trial of a study, every rerun, usually shares one)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], DataSet] = {}

    def get(self, config: TrainConfig) -> DataSet:
        key = tuple(getattr(config, f) for f in _DATA_FIELDS)
        if key not in self._cache:
            self._cache.clear()  # keep at most one data set in memory
            self._cache[key] = load_data(config)
        return self._cache[key]
