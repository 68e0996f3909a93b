"""In-process A/B of one fp32 training step with teacher forcing (default dims, batch 2, 16 frames, 32x64).

Rows: the lab-style template loop and our trainer path (channels_last, batched over time), each with and
without denormals flushed to zero, and ours in NCHW. Rounds are interleaved on the bench's synthetic clips, so
machine noise hits every row; the first round is a warm-up. A quicker, narrower check than
`bench_trainer.py`, used for the denormal flag (`model.device.flush_denormals`).

    python bench/ab_trainer_step.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_trainer import Variant, roomy_primitive_cache, timed  # noqa: E402

from model.config import TrainConfig  # noqa: E402
from model.data import load_data  # noqa: E402
from model.device import keep_freed_memory  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds per row (default 4)")
    args = parser.parse_args(argv)
    roomy_primitive_cache()
    keep_freed_memory()  # as `train` does on the CPU
    dev = torch.device("cpu")
    clips = load_data(TrainConfig(device="cpu", val_vi_len=64)).train
    nchw = TrainConfig(device="cpu", amp="none", channels_last=False)
    cl = TrainConfig(device="cpu", amp="none", channels_last=True)
    rows = {
        "template": Variant("template", True, True, nchw, dev),
        "template + flush": Variant("template", True, True, nchw, dev, True),
        "ours channels_last": Variant("ours", False, True, cl, dev),
        "ours channels_last + flush (the trainer)": Variant("ours", False, True, cl, dev, True),
        "ours NCHW + flush": Variant("ours", False, True, nchw, dev, True),
    }
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in rows}
    n_dim = next(iter(rows.values())).model.n_dim
    for r in range(args.rounds + 1):
        idx = torch.arange(2 * r, 2 * r + 2) % clips.frames.shape[0]
        f, p = clips.frames[idx], clips.poses[idx]
        eps = torch.randn((f.shape[1] - 1, 2, n_dim, *f.shape[-2:]), generator=gen)
        for name, v in rows.items():
            t, _ = timed(functools.partial(v.step, f, p, eps), dev)
            if r:
                times[name].append(t)
        print(
            f"round {r}{' (warm-up)' if not r else ''}: "
            + ", ".join(f"{rows_t[-1]:.2f}" for rows_t in times.values() if rows_t),
            flush=True,
        )
    base = statistics.median(times["template"])
    print("| row | s/step (median) | vs template |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {base / statistics.median(t):.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
