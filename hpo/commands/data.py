"""`hpo data synth --out DIR [--seed K]` and `hpo data check DIR [--set FIELD=VALUE ...]`."""

from __future__ import annotations

import argparse
import sys

from hpo.commands.common import add_sets
from model.config import TrainConfig, from_dict, parse_sets
from model.data import check_data, summary
from model.synth import builtin_set, make_synthetic
from model.words import plural

# `hpo data synth` options: (flag, make_synthetic's keyword, help). The defaults write the built-in set, the one
# training uses with `data = ""` (TrainConfig's synth_* fields, val_vi_len and frame size): one synthetic set.
_BUILTIN = builtin_set(TrainConfig())
_BUILTIN_SIZES = {k: v for k, v in _BUILTIN.items() if k != "test_len"}  # test_len is always the val length here
_SYNTH = (
    ("--seed", "seed", "seed of the dance and background (TrainConfig's synth_seed)"),
    ("--train-frames", "train_frames", "training frames (synth_train_frames)"),
    ("--val-videos", "val_videos", "validation videos (synth_val_videos)"),
    ("--video-len", "val_len", "frames per val/test video (val_vi_len)"),
    ("--test-videos", "test_videos", "test videos (0 = no test split)"),
    ("--height", "height", "image height in pixels (frame_h)"),
    ("--width", "width", "image width in pixels (frame_w)"),
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("data", parents=[common], help="write the synthetic data set or check a data set")
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="data_command", required=True, metavar="{synth,check}")
    synth = actions.add_parser("synth", parents=[common], help="write the synthetic dance set in the lab layout")
    synth.add_argument("--out", required=True, help="new (or empty) folder to write the set into")
    for flag, dest, help in _SYNTH:
        default = _BUILTIN[dest]
        synth.add_argument(flag, dest=dest, type=int, default=default, help=f"{help}; default {default}")
    check = actions.add_parser("check", parents=[common], help="validate a data set and say what is wrong")
    check.add_argument("dir", help="data set root in the lab layout")
    add_sets(p=check, help="TrainConfig override used by the check, e.g. train_vi_len, val_vi_len, frame_h, cache_dir")


def run(args: argparse.Namespace) -> int:
    """`synth`: write the set and say what was written. `check`: `OK: ...` and 0, or one line per problem and 2."""
    if args.data_command == "synth":
        sizes = {dest: getattr(args, dest) for _, dest, _ in _SYNTH}
        out = make_synthetic(args.out, **sizes, test_len=sizes["val_len"])
        builtin = " (the built-in set: what training uses with data empty)" if sizes == _BUILTIN_SIZES else ""
        print(
            f"wrote {out}: {plural(args.train_frames, 'train frame')}, {plural(args.val_videos, 'val video')} and "
            f"{plural(args.test_videos, 'test video')} of {plural(args.val_len, 'frame')}, "
            f"{args.height}x{args.width}, seed {args.seed}{builtin}"
        )
        return 0
    config = from_dict(parse_sets(args.sets))
    problems = check_data(args.dir, config)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not problems:
        print(f"OK: {summary(args.dir, config)}")
    return 2 if problems else 0
