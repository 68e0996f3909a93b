"""Against the seed's own method (issue 21, target 4): sequential scikit-optimize GP against `hpo run`.

The lab report tuned with scikit-optimize's `gp_minimize`: one process, a GP proposing one config after another,
every trial trained to the end, the best single draw kept. For each study seed K, in fresh folders, with training
seeds of its own (B = 1 + 100 K, as in bench_confirm.py):

    seed's method: python -m hpo run --study vp-bo --n-trials 20 --sampler skopt --pruner none --no-confirm \\
                       --seed K --set seed=B -q                        # one worker; exported: the raw best
    ours:          2 x python -m hpo run --study vp-bo --n-trials N --seed K --set seed=B -q
                                                                       # two workers, pruning and confirmation;
                                                                       # exported: the confirmed winner

(`SkoptSampler` is skopt's `Optimizer` with a GP, the engine of `gp_minimize`, as an Optuna sampler; both arms
train through the same objective.) Both exported configs are then retrained on the same held-out training seeds
(B + 50, ...; paired), nothing written to disk. The goal: ours ahead on the held-out mean, at no more wall clock
(both arms' walls are printed; N is chosen so that ours fits, and the check says whether it did). Each seed's
result is appended to bench/skopt_seeds.jsonl; `--report-only` rebuilds the section from it.

    python bench/bench_vs_skopt.py --seeds 0 1 2 [--ours-trials 30] [--skopt-trials 20] [--held-out 4] [--dry]
"""

from __future__ import annotations

import argparse
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
from bench_confirm import HELD_OUT_OFFSET, judge, mean_se, training_seed
from common import RESULTS, finish, run_facts, seed_log
from heldout import retrain_trial

from hpo.results import answer

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Against the seed's own method (issue 21)"
LOG = Path(__file__).resolve().parent / "skopt_seeds.jsonl"


@dataclass
class Arm:
    seconds: float
    trial: int
    reported: float  # what the arm exports as the config's value
    held: list[float]
    epochs: int  # every epoch trained, search and confirmation


@dataclass
class SeedResult:
    seed: int
    skopt: Arm
    ours: Arm


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _epochs(url: str) -> int:
    storage = optuna.storages.RDBStorage(url)
    return sum(
        len(t.intermediate_values)
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
    )


def _run(cmds: list[list[str]], folder: Path) -> float:
    """Start every command at once in `folder`, wait for all; the wall time."""
    started = time.perf_counter()
    procs = [subprocess.Popen([*cmd, "-q"], cwd=folder, env=_env()) for cmd in cmds]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{' '.join(p.args)} exited {p.returncode}")  # type: ignore[arg-type]
    return time.perf_counter() - started


def one_seed(seed: int, ours_trials: int, skopt_trials: int, n_held: int, parent: Path) -> SeedResult:
    base = training_seed(seed)
    common = [sys.executable, "-m", "hpo", "run", "--study", "vp-bo", "--seed", str(seed), "--set", f"seed={base}"]
    held_seeds = [base + HELD_OUT_OFFSET + i for i in range(n_held)]

    a = Path(tempfile.mkdtemp(prefix=f"skopt{seed}-", dir=parent))
    flags = ["--n-trials", str(skopt_trials), "--sampler", "skopt", "--pruner", "none", "--no-confirm"]
    wall = _run([[*common, *flags]], a)
    url = f"sqlite:///{a / 'hpo.db'}"
    study = optuna.load_study(study_name="vp-bo", storage=url)
    raw = study.best_trial
    skopt = Arm(wall, raw.number, float(raw.value or math.nan), retrain_trial(study, raw, held_seeds), _epochs(url))

    b = Path(tempfile.mkdtemp(prefix=f"ours{seed}-", dir=parent))
    wall = _run([[*common, "--n-trials", str(ours_trials)] for _ in range(2)], b)
    url = f"sqlite:///{b / 'hpo.db'}"
    study = optuna.load_study(study_name="vp-bo", storage=url)
    ans = answer(study)
    ours = Arm(wall, ans.trial.number, ans.value, retrain_trial(study, ans.trial, held_seeds), _epochs(url))
    return SeedResult(seed, skopt, ours)


def report(results: list[SeedResult]) -> list[str]:
    lines = [
        "| study seed | skopt: min / epochs / trial: reported / held-out | ours: min / epochs / trial: reported /"
        " held-out | ours - skopt held-out |",
        "|---|---|---|---|",
    ]
    for r in results:
        s, o = r.skopt, r.ours
        lines.append(
            f"| {r.seed} | {s.seconds / 60:.1f} / {s.epochs} / {s.trial}: {s.reported:.2f} / "
            f"{statistics.fmean(s.held):.2f} | {o.seconds / 60:.1f} / {o.epochs} / {o.trial}: {o.reported:.2f} / "
            f"{statistics.fmean(o.held):.2f} | {statistics.fmean(o.held) - statistics.fmean(s.held):+.2f} |"
        )
    diffs = [statistics.fmean(r.ours.held) - statistics.fmean(r.skopt.held) for r in results]
    d, d_se = mean_se(diffs)
    walls_ok = all(r.ours.seconds <= r.skopt.seconds for r in results)
    lines += [
        "",
        f"Over {len(results)} study seed(s) ({', '.join(str(r.seed) for r in results)}), both exported configs "
        f"retrained on the same {len(results[0].ours.held)} held-out seeds of their study seed:",
        f"4. Ours minus the seed's method on the held-out mean: {d:+.2f} dB (se {d_se:.2f}). Target > 0: "
        + judge(d, d_se, d > 0, -d > 2 * d_se if math.isfinite(d_se) else False)
        + f"; ours took no more wall clock on every seed: {'yes' if walls_ok else 'no'} "
        f"(mean {statistics.fmean([r.ours.seconds for r in results]) / 60:.1f} against "
        f"{statistics.fmean([r.skopt.seconds for r in results]) / 60:.1f} min).",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ours-trials", type=int, default=30, help="the study budget of the two workers")
    p.add_argument("--skopt-trials", type=int, default=20)
    p.add_argument("--held-out", type=int, default=4)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--dry", action="store_true", help="print only; do not write the results file")
    p.add_argument("--report-only", action="store_true", help=f"rebuild the section from {LOG.name}, run nothing")
    args = p.parse_args(argv)
    facts = run_facts(argv)
    started = time.perf_counter()
    if not args.report_only:
        with tempfile.TemporaryDirectory(prefix="bench-skopt-") as tmp:
            for seed in args.seeds:
                r = one_seed(seed, args.ours_trials, args.skopt_trials, args.held_out, Path(tmp))
                seed_log(LOG, {"seed": r.seed, "skopt": r.skopt.__dict__, "ours": r.ours.__dict__})
    results = [SeedResult(r["seed"], Arm(**r["skopt"]), Arm(**r["ours"])) for r in seed_log(LOG)]
    finish(HEADING, facts, started, report(results), args.results, args.dry)


if __name__ == "__main__":
    main()
