"""`hpo train [FILE.toml] [--set FIELD=VALUE ...]`: one training run of a TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from hpo.commands.common import add_sets
from hpo.progress import EpochBar
from model.config import TrainConfig, field_types, load_config
from model.data import load_data
from model.metrics import copy_last_psnr
from model.predict import ensure_writable_dir
from model.train import total_epochs, train


def fields_epilog() -> str:
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


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="one training run of a config (TOML + --set overrides)",
        description="Train the CVAE once. Without a file, the TrainConfig defaults are used; with "
        "data empty, the built-in synthetic set. Writes last.pt, best.pt and metrics.json to `out` "
        "(default runs/train).",
        epilog=fields_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
            f"data {data.source}: {data.train.frames.shape[0]} clips, {data.val.frames.shape[0]} val videos; "
            f"copy-last-frame baseline {copy_last_psnr(data.val.frames):.2f} dB; device {config.device}; "
            f"out {config.out}"
        )
    bar = EpochBar(total_epochs(config), "train", quiet=args.quiet, lines=True)
    try:
        result = train(config, data, on_epoch=bar)
    finally:
        bar.close()
    print(
        f"val PSNR {result.val_psnr:.2f} dB (best {result.best_val_psnr:.2f}) after {len(result.history)} epochs "
        f"in {result.seconds:.1f} s on {result.device}; checkpoint {config.out}/last.pt"
    )
    return 0
