"""`hpo retrain FILE.toml [--epochs N] [--seeds K] [--out DIR] [--resume] [--set F=V ...]`: the final model."""

from __future__ import annotations

import argparse

from hpo.progress import EpochBar
from hpo.retrain import DEFAULT_OUT, RetrainReport, RunReport, retrain, retrain_config
from model.config import TrainConfig
from model.train import EpochHook, stages


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "retrain",
        parents=[common],
        help="train an exported config to the final model (checkpoints, plots, GIF, submission)",
        description="Train a TrainConfig TOML (e.g. from `hpo export`), optionally longer and with several seeds. "
        "Writes last.pt, best.pt, best-eNNNN.pt (the keep_best best epochs), metrics.json, psnr_per_frame.png, "
        "val.gif and, when the data has a test split, submission.csv and test-<id>.gif into --out.",
    )
    p.add_argument("config", help="TrainConfig TOML file (e.g. one written by `hpo export`)")
    p.add_argument("--epochs", type=int, help="epochs of the main stage (default: the file's)")
    p.add_argument("--seeds", type=int, default=1, help="runs with seeds seed, seed+1, ... in OUT/seed-N (default 1)")
    p.add_argument("--out", help=f"output folder (default: the file's `out`, else {DEFAULT_OUT})")
    p.add_argument("--resume", action="store_true", help="continue the run(s) in --out from last.pt after a crash")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field (repeatable)")
    p.set_defaults(func=run)


class RunBars:
    """A hook factory for a sequence of runs: one progress bar per run, the previous one closed first."""

    def __init__(self, quiet: bool, lines: bool = True) -> None:
        self.quiet, self.lines = quiet, lines
        self.bar: EpochBar | None = None

    def __call__(self, label: str, config: TrainConfig, done: int = 0) -> EpochHook:
        self.close()
        total = sum(n for *_, n in stages(config))
        self.bar = EpochBar(total, label, quiet=self.quiet, lines=self.lines)
        self.bar.bar.update(done)  # a resumed run starts where its last.pt left off
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run_line(r: RunReport) -> str:
    parts = [
        f"{name}: {s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}, val PSNR {s['final_val_psnr']:.2f} dB "
        f"(best {s['best_val_psnr']:.2f} at epoch {s['best_epoch'] + 1})"
        for name, s in r.stages.items()
    ]
    resumed = f" (resumed after epoch {r.resumed_from + 1})" if r.resumed_from is not None else ""
    return f"seed {r.seed}{resumed}: " + "; ".join(parts) + f"; outputs in {r.out}"


def run(args: argparse.Namespace) -> int:
    config = retrain_config(args.config, args.set, args.epochs, args.out)
    bars = RunBars(args.quiet)
    try:
        report: RetrainReport = retrain(
            config,
            seeds=args.seeds,
            resume=args.resume,
            hook_factory=lambda config, done: bars(f"seed {config.seed}", config, done),
        )
    finally:
        bars.close()
    for r in report.runs:
        print(_run_line(r))
    if report.seeds_json is not None:
        n = len(report.runs)
        print(f"val PSNR over {n} seeds: {report.mean:.2f} ± {report.std:.2f} dB (mean ± std); {report.seeds_json}")
    else:
        r = report.runs[0]
        print(f"val PSNR {r.final_val_psnr:.2f} dB (best {r.best_val_psnr:.2f}); checkpoints {r.out}/best.pt, last.pt")
    return 0
