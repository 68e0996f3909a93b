"""`hpo predict --checkpoint CKPT [--data DIR] [--out DIR]`: the lab's submission.csv from a checkpoint alone.

Without --data, the built-in synthetic set (the one `data = ""` trains on) is predicted.

`--trial N --study NAME` takes a study trial's kept final weights instead (docs/ARCHITECTURE.md, "Trial checkpoints").
"""

from __future__ import annotations

import argparse

from hpo.commands.common import add_command, add_sets, add_storage, add_study, load_study
from hpo.progress import CountBar
from hpo.storage import resolve_url
from hpo.trial_checkpoints import trial_weights
from model.config import parse_sets
from model.errors import UsageError
from model.predict import SUBMISSION, predict
from model.words import plural

HELP = "roll out every test video from a checkpoint and write submission.csv"
DESCRIPTION = (
    "Rebuild the model from a checkpoint's own config, roll out each test video of --data (default: the "
    "built-in synthetic set) "
    f"(first frame + poses) and write {SUBMISSION} (id, then 3*H*W ints in 0..255 per frame) and a GIF "
    "per video into --out; also prints the val PSNR of the same weights."
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "predict", HELP, DESCRIPTION)
    p.add_argument("--checkpoint", help="a checkpoint written by `hpo retrain`/`hpo train` (best.pt)")
    p.add_argument("--trial", type=int, help="instead of --checkpoint: a trial of --study that kept its final weights")
    add_study(p, required=False, help="the study of --trial")
    add_storage(p)
    p.add_argument(
        "--data",
        help="data set in the lab layout with a test split (test/test_img/K, ...); default: the built-in synthetic "
        "set of the checkpoint's config, the one training uses with data empty",
    )
    p.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    p.add_argument("--poses", type=int, default=0, help="expected poses per test video, e.g. 630 (default: any)")
    add_sets(p, help="run settings over the checkpoint's config (device, cache_dir, seed); shape fields must match it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bar = CountBar("predict", "frame", quiet=args.quiet)
    try:
        result = predict(_checkpoint(args), args.data, args.out, parse_sets(args.sets), args.poses, progress=bar)
    finally:
        bar.close()
    val = f"; val PSNR {result.val_psnr:.2f} dB" if result.val_psnr is not None else ""
    print(
        f"wrote {result.submission} ({plural(result.n_videos, 'video')} x {plural(result.n_poses, 'frame')}) and "
        f"{plural(len(result.gifs), 'GIF')}{val}"
    )
    return 0


def _checkpoint(args: argparse.Namespace) -> str:
    if (args.checkpoint is None) == (args.trial is None):
        raise UsageError(
            "give one of --checkpoint FILE or --trial N (with --study NAME): which weights to predict with"
        )
    if args.checkpoint is not None:
        return str(args.checkpoint)
    if not args.study:
        raise UsageError(f"--trial {args.trial} needs --study NAME (and --storage URL unless the default): whose trial")
    return str(trial_weights(load_study(args, heartbeat=False), resolve_url(args.storage), args.trial))
