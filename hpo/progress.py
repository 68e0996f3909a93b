"""Progress a person can follow: a tqdm bar over epochs, one line per epoch or trial. `-q` silences it."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def epoch_line(metrics: dict[str, Any], total: int) -> str:
    tf = metrics.get("teacher_forcing", 0.0)
    return (
        f"epoch {metrics['epoch'] + 1}/{total}  loss {metrics['train_loss']:.4f}  beta {metrics['beta']:.2f}  "
        f"tfr {metrics['tfr']:.2f}{' (TF)' if tf >= 0.5 else ''}  val PSNR {metrics['val_psnr']:.2f} dB  "
        f"{metrics['seconds']:.1f} s"
    )


class EpochBar:
    """A bar over a run's epochs; `lines` also prints one line per epoch (`hpo train`)."""

    def __init__(self, total: int, desc: str, quiet: bool = False, lines: bool = False) -> None:
        self.total, self.lines, self.quiet = total, lines, quiet
        self.bar = tqdm(total=total, desc=desc, unit="ep", leave=False, disable=quiet, file=sys.stderr,
                        dynamic_ncols=True)

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(psnr=f"{metrics['val_psnr']:.2f}", loss=f"{metrics['train_loss']:.4f}")
        if self.lines and not self.quiet:
            self.bar.write(epoch_line(metrics, self.total), file=sys.stdout)

    def close(self) -> None:
        self.bar.close()
