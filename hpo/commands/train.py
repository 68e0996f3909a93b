"""`hpo train [FILE.toml] [--set FIELD=VALUE ...]`: one training run of a TrainConfig."""

from __future__ import annotations

import argparse

from hpo.commands.common import add_command, add_sets
from hpo.progress import EpochBar
from model.config import fields_table, load_config
from model.data import load_data
from model.metrics import copy_last_psnr
from model.predict import ensure_writable_dir
from model.train import total_epochs, train
from model.words import plural

HELP = "one training run of a config (TOML + --set overrides)"
DESCRIPTION = (
    "Train the CVAE once. Without a file, the TrainConfig defaults are used; with data empty, the\n"
    "built-in synthetic set. Writes last.pt, best.pt and metrics.json to `out` (default runs/train)."
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "train", HELP, DESCRIPTION)
    p.epilog, p.formatter_class = fields_table(), argparse.RawDescriptionHelpFormatter
    p.add_argument("config", nargs="?", help="TrainConfig TOML file (e.g. one written by `hpo export`)")
    add_sets(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.sets)
    if not config.out:
        config = config.replace(out="runs/train")
    data = load_data(config)
    ensure_writable_dir(config.out, "out (--set out=DIR)")  # before training, not after a whole run
    if not args.quiet:
        print(
            f"data {data.source}: {plural(data.train.frames.shape[0], 'clip')}, "
            f"{plural(data.val.frames.shape[0], 'val video')}; "
            f"copy-last-frame baseline {copy_last_psnr(data.val.frames):.2f} dB; device {config.device}; "
            f"out {config.out}"
        )
    bar = EpochBar(total_epochs(config), "train", quiet=args.quiet, lines=True)
    try:
        result = train(config, data, on_epoch=bar, on_step=None if args.quiet else bar.on_step)
    finally:
        bar.close()
    print(
        f"val PSNR {result.val_psnr:.2f} dB (best {result.best_val_psnr:.2f}) "
        f"after {plural(len(result.history), 'epoch')} in {result.seconds:.1f} s on {result.device}; "
        f"checkpoint {config.out}/last.pt"
    )
    return 0
