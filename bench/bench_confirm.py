"""Confirmation's worth (issue 21): is the confirmed winner's value honest, and a better pick than the raw best?

For each study seed K, as a user runs it, in a fresh folder:

    python -m hpo run --study vp-bo --n-trials 50 --seed K -q      # search, then confirmation (the spec's [confirm])

then both picks, the confirmed winner and the raw single-draw best, are retrained on HELD-OUT training seeds
(100, 101, ...) that neither the search (seed 1) nor the confirmation (seeds 2..4) used, nothing written to disk.
Printed and written to bench/RESULTS.md ("Confirmation"):

1. honest estimate: the winner's reported value minus its held-out mean (target: within 0.3 dB on the mean over
   study seeds); the raw best's same gap beside it;
2. better pick: winner's held-out mean minus the raw best's, paired by study seed (target: >= 0);
3. cost: confirmation epochs over search epochs, and the study's wall time with confirmation (target < 10 min).

    python bench/bench_confirm.py --seeds 0 1 2 3 4 [--trials 50] [--held-out 4] [--dry]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from common import RESULTS, loadavg, machine, run_facts, section_header, write_section
from heldout import retrain_trial

from hpo.confirm import companion_name
from hpo.results import answer

ROOT = Path(__file__).resolve().parent.parent

HEADING = "## Confirmation (issue 21)"
HELD_OUT_BASE = 100  # held-out training seeds start here: the search used 1, confirmation 2..4


@dataclass
class SeedResult:
    seed: int
    seconds: float
    confirmed: bool
    winner_trial: int
    winner_value: float  # what `hpo best` reports (mean over confirmation seeds)
    winner_held: list[float]
    raw_trial: int
    raw_value: float
    raw_held: list[float]
    search_epochs: int
    confirm_epochs: int


def epochs_of(study: optuna.Study) -> int:
    return sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))


def one_seed(seed: int, trials: int, n_held: int, parent: Path) -> SeedResult:
    folder = Path(tempfile.mkdtemp(prefix=f"seed{seed}-", dir=parent))
    cmd = [sys.executable, "-m", "hpo", "run", "--study", "vp-bo", "--n-trials", str(trials), "--seed", str(seed)]
    started = time.perf_counter()
    subprocess.run([*cmd, "-q"], cwd=folder, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    url = f"sqlite:///{folder / 'hpo.db'}"
    study = optuna.load_study(study_name="vp-bo", storage=url)
    ans = answer(study)
    seeds = [HELD_OUT_BASE + i for i in range(n_held)]
    winner_held = retrain_trial(study, ans.trial, seeds)
    raw_held = winner_held if ans.raw.number == ans.trial.number else retrain_trial(study, ans.raw, seeds)
    companion = optuna.load_study(study_name=companion_name("vp-bo"), storage=url)
    return SeedResult(
        seed,
        seconds,
        ans.confirmed,
        ans.trial.number,
        ans.value,
        winner_held,
        ans.raw.number,
        float(ans.raw.value or math.nan),
        raw_held,
        epochs_of(study),
        epochs_of(companion),
    )


def mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan)


def judge(estimate: float, se: float, ok: bool, wrong_side_by_2se: bool) -> str:
    if ok:
        return "**met**"
    if wrong_side_by_2se:
        return "**missed**"
    return "**unresolved**"


def report(results: list[SeedResult]) -> list[str]:
    lines = [
        "| study seed | study min | confirmed | winner trial: reported / held-out | raw trial: value / held-out |"
        " confirm/search epochs |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.seed} | {r.seconds / 60:.1f} | {r.confirmed} | {r.winner_trial}: {r.winner_value:.2f} / "
            f"{statistics.fmean(r.winner_held):.2f} | {r.raw_trial}: {r.raw_value:.2f} / "
            f"{statistics.fmean(r.raw_held):.2f} | {r.confirm_epochs}/{r.search_epochs} |"
        )
    honest = [r.winner_value - statistics.fmean(r.winner_held) for r in results]
    raw_gap = [r.raw_value - statistics.fmean(r.raw_held) for r in results]
    better = [statistics.fmean(r.winner_held) - statistics.fmean(r.raw_held) for r in results]
    cost = sum(r.confirm_epochs for r in results) / sum(r.search_epochs for r in results)
    h, h_se = mean_se(honest)
    g, g_se = mean_se(raw_gap)
    b, b_se = mean_se(better)
    n = len(results)
    lines += [
        "",
        f"Over {n} study seed(s) ({', '.join(str(r.seed) for r in results)}), each pick retrained on held-out "
        f"seeds {HELD_OUT_BASE}..{HELD_OUT_BASE + len(results[0].winner_held) - 1}:",
        f"1. Honest estimate: reported minus held-out, confirmed winner {h:+.2f} dB (se {h_se:.2f}); raw best "
        f"{g:+.2f} dB (se {g_se:.2f}). Target |winner| <= 0.3 dB: "
        + judge(h, h_se, abs(h) <= 0.3, abs(h) - 0.3 > 2 * h_se if math.isfinite(h_se) else False),
        f"2. Better pick: winner's held-out mean minus the raw best's {b:+.2f} dB (se {b_se:.2f}). Target >= 0: "
        + judge(b, b_se, b >= 0, -b > 2 * b_se if math.isfinite(b_se) else False),
        f"3. Cost: confirmation epochs are {cost:.2f} of the search's; study wall time with confirmation "
        f"{statistics.fmean([r.seconds for r in results]) / 60:.1f} min (mean). Target < 10 min: "
        + ("**met**" if max(r.seconds for r in results) < 600 else "**missed**"),
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--held-out", type=int, default=4)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--dry", action="store_true", help="print only; do not write the results file")
    args = p.parse_args(argv)
    facts = run_facts(argv)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-confirm-") as tmp:
        for seed in args.seeds:
            r = one_seed(seed, args.trials, args.held_out, Path(tmp))
            results.append(r)
            print(json.dumps(r.__dict__), flush=True)
            for line in report(results)[-3:]:
                print(line, flush=True)
    facts.update(machine=machine("CPU only"), load_after=loadavg(), wall_s=time.perf_counter() - started)
    section = section_header(HEADING, facts, "the box's other work adds noise to wall times") + report(results)
    print("\n".join(section))
    if not args.dry:
        write_section(args.results, HEADING, "\n".join(section) + "\n")


if __name__ == "__main__":
    main()
