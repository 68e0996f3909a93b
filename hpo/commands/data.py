"""`hpo data synth --out DIR [--seed K]` and `hpo data check DIR [--set FIELD=VALUE ...]`."""

from __future__ import annotations

import argparse
import sys

from hpo.commands.common import add_sets
from hpo.words import plural
from model.config import from_dict, parse_sets
from model.data import check_data, summary
from model.synth import make_synthetic

# `hpo data synth` options: (flag, make_synthetic's keyword, default, help)
_SYNTH = (
    ("--seed", "seed", 0, "seed of the dance and background"),
    ("--train-frames", "train_frames", 640, "training frames"),
    ("--val-videos", "val_videos", 1, "validation videos"),
    ("--video-len", "video_len", 630, "frames per val/test video"),
    ("--test-videos", "test_videos", 2, "test videos (0 = no test split)"),
    ("--height", "height", 64, "image height in pixels"),
    ("--width", "width", 128, "image width in pixels"),
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("data", parents=[common], help="write the synthetic data set or check a data set")
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="data_command", required=True, metavar="{synth,check}")
    synth = actions.add_parser("synth", parents=[common], help="write the synthetic dance set in the lab layout")
    synth.add_argument("--out", required=True, help="new (or empty) folder to write the set into")
    for flag, dest, default, help in _SYNTH:
        synth.add_argument(flag, dest=dest, type=int, default=default, help=f"{help} (default {default})")
    check = actions.add_parser("check", parents=[common], help="validate a data set and say what is wrong")
    check.add_argument("dir", help="data set root in the lab layout")
    add_sets(p=check, help="TrainConfig override used by the check, e.g. train_vi_len, val_vi_len, frame_h, cache_dir")


def run(args: argparse.Namespace) -> int:
    """`synth`: write the set and say what was written. `check`: `OK: ...` and 0, or one line per problem and 2."""
    if args.data_command == "synth":
        sizes = {dest: getattr(args, dest) for _, dest, _, _ in _SYNTH}
        video_len = sizes.pop("video_len")
        out = make_synthetic(args.out, **sizes, val_len=video_len, test_len=video_len)
        print(
            f"wrote {out}: {plural(args.train_frames, 'train frame')}, {plural(args.val_videos, 'val video')} and "
            f"{plural(args.test_videos, 'test video')} of {plural(args.video_len, 'frame')}, "
            f"{args.height}x{args.width}, seed {args.seed}"
        )
        return 0
    config = from_dict(parse_sets(args.sets))
    problems = check_data(args.dir, config)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not problems:
        print(f"OK: {summary(args.dir, config)}")
    return 2 if problems else 0
