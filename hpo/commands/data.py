"""`hpo data synth --out DIR [--seed K]` and `hpo data check DIR [--set FIELD=VALUE ...]`."""

from __future__ import annotations

import argparse
import sys

from model.config import from_dict, parse_sets
from model.data import check_data, summary
from model.synth import make_synthetic

NAME = "data"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(NAME, parents=[common], help="write the synthetic data set or check a data set")
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="data_command", required=True, metavar="{synth,check}")

    synth = actions.add_parser("synth", parents=[common], help="write the synthetic dance set in the lab layout")
    synth.add_argument("--out", required=True, help="new (or empty) folder to write the set into")
    synth.add_argument("--seed", type=int, default=0, help="seed of the dance and background (default 0)")
    synth.add_argument("--train-frames", type=int, default=640, help="training frames (default 640)")
    synth.add_argument("--val-videos", type=int, default=1, help="validation videos (default 1)")
    synth.add_argument("--video-len", type=int, default=630, help="frames per val/test video (default 630)")
    synth.add_argument("--test-videos", type=int, default=2, help="test videos (default 2; 0 = no test split)")
    synth.add_argument("--height", type=int, default=64, help="image height in pixels (default 64)")
    synth.add_argument("--width", type=int, default=128, help="image width in pixels (default 128)")

    check = actions.add_parser("check", parents=[common], help="validate a data set and say what is wrong")
    check.add_argument("dir", help="data set root in the lab layout")
    check.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="TrainConfig override used by the check, e.g. train_vi_len, val_vi_len, frame_h, frame_w, cache_dir",
    )


def run(args: argparse.Namespace) -> int:
    """Dispatch to `synth` or `check`; returns the exit code."""
    return run_synth(args) if args.data_command == "synth" else run_check(args)


def run_synth(args: argparse.Namespace) -> int:
    """Write the synthetic set and say what was written."""
    out = make_synthetic(
        args.out,
        args.seed,
        train_frames=args.train_frames,
        val_videos=args.val_videos,
        val_len=args.video_len,
        test_videos=args.test_videos,
        test_len=args.video_len,
        height=args.height,
        width=args.width,
    )
    print(
        f"wrote {out}: {args.train_frames} train frames, {args.val_videos} val videos and {args.test_videos} "
        f"test videos of {args.video_len} frames, {args.height}x{args.width}, seed {args.seed}"
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Print `OK: ...` and return 0, or print one line per problem on stderr and return 2."""
    config = from_dict(parse_sets(args.sets))
    problems = check_data(args.dir, config)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    print(f"OK: {summary(args.dir, config)}")
    return 0
