"""Trials per minute of 1, 2 and 3 `hpo run` workers on one machine, before and after they split its cores.

Before: every worker keeps torch's own thread count (`HPO_TORCH_THREADS=0`), so N workers run N x cores threads.
After: the default, each worker takes its share of the cores (`model.device.share_cores`). Each configuration runs
the smoke spec (`--pruner none`, so every trial trains its 2 epochs) on a fresh journal storage in a temp folder:
N workers start together and each stops starting trials after `--window` seconds. Trials per minute counts the
finished trials over the span from the first trial's start to the last one's end (process start-up excluded).
The workers keep their slot files in the configuration's temp folder (TMPDIR), so hpo workers that other people
run on the same machine are not counted in the split (their load still shows in the timings).

    python bench/bench_workers.py [--window 30] [--workers 1 2 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parent.parent


def run_config(workers: int, split: bool, window: float, tmp: Path) -> dict[str, float]:
    log = tmp / f"w{workers}-{'split' if split else 'all'}.log"
    url = f"journal:///{log}"
    env = {k: v for k, v in os.environ.items() if k != "HPO_TORCH_THREADS"}
    env["TMPDIR"] = str(tmp)  # the workers' slot files here: the split counts this configuration's workers only
    if not split:
        env["HPO_TORCH_THREADS"] = "0"  # torch's default in every worker: the behaviour before the split
    cmd = [sys.executable, "-m", "hpo", "run", "--study", "smoke", "--pruner", "none", "--n-trials", "1000"]
    cmd += ["--storage", url, "--timeout", str(window), "-q"]
    procs = [subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL) for _ in range(workers)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a worker exited {p.returncode}")
    study = optuna.load_study(
        study_name="smoke", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
    )
    done = [t for t in study.trials if t.state.is_finished() and t.datetime_complete and t.datetime_start]
    finished = [t for t in done if t.state.name in ("COMPLETE", "PRUNED")]
    first = min(t.datetime_start for t in done)  # type: ignore[type-var]
    last = max(t.datetime_complete for t in done)  # type: ignore[type-var]
    span = (last - first).total_seconds()
    per_trial = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished) / len(finished)  # type: ignore[operator]
    return {"trials": len(finished), "span": span, "per_min": len(finished) / span * 60, "per_trial": per_trial}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0, help="seconds each worker starts trials for")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    print(f"cpus {len(os.sched_getaffinity(0))}, window {args.window:g} s, smoke spec, --pruner none, journal storage")
    print("| workers | threads | trials | span s | trials/min | s per trial |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for n in args.workers:
            for split in (False, True):
                started = time.perf_counter()
                r = run_config(n, split, args.window, Path(tmp))
                label = "split (after)" if split else "all cores each (before)"
                print(
                    f"| {n} | {label} | {r['trials']} | {r['span']:.1f} | {r['per_min']:.1f} | {r['per_trial']:.2f} |",
                    flush=True,
                )
                print(f"  ({time.perf_counter() - started:.0f} s wall)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
