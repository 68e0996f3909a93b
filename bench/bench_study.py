"""Study benchmarks (issue 3): the default 50-trial study, pruning's worth, samplers compared.

Every study runs as a user runs it: `python -m hpo run --study vp-bo ...` in a subprocess on a fresh
SQLite file, on the embedded defaults (synthetic data, the spec's `small` profile, CPU). Numbers are read
back from the storage afterwards.

    python bench/bench_study.py main                        # `hpo run --study vp-bo --n-trials 50`, timed
    python bench/bench_study.py pruning --trials 20 --seeds 0 1
    python bench/bench_study.py samplers --trials 20 --seeds 0 1 2
    python bench/bench_study.py all                         # the three above (~1.5 h on a 2-core CPU)

Each part replaces its own subsection of bench/RESULTS.md (`--results` for another file, `--dry` for none).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from common import HEADER, RESULTS, loadavg, machine

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Studies (issue 3)"
SAMPLERS = ("tpe", "gp", "skopt", "random")
RETRAIN_SEEDS = 4  # a study's best config is retrained with its seed and the next three


@dataclass
class StudyRun:
    """One `hpo run` and what its storage holds afterwards."""

    sampler: str
    pruner: str
    seed: int | None
    n_trials: int
    seconds: float
    best: float
    enqueued: float | None  # value of the warm-start (report) config, when it completed
    epochs: int  # epochs trained over all trials (reported intermediate values)
    states: dict[str, int]
    fail_reasons: dict[str, int]  # fail_reason user attr -> count, over the FAIL trials
    storage: str  # the study's storage URL, for reruns right after it ends


def run_study(n_trials: int, sampler: str | None, pruner: str | None, seed: int | None, tmp: Path) -> StudyRun:
    """`python -m hpo run --study vp-bo --n-trials N [...]` in `tmp` (its ./hpo.db); wall time start to exit."""
    cmd = [sys.executable, "-m", "hpo", "run", "--study", "vp-bo", "--n-trials", str(n_trials), "-q"]
    for flag, value in (("--sampler", sampler), ("--pruner", pruner), ("--seed", seed)):
        if value is not None:
            cmd += [flag, str(value)]
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    study = optuna.load_study(study_name="vp-bo", storage=f"sqlite:///{tmp / 'hpo.db'}")
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    enqueued = [t.value for t in trials if t.user_attrs.get("enqueued") and t.value is not None]
    reasons: dict[str, int] = {}
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL:
            # "diverged at epoch 2: ..." -> "diverged": the kind of failure, not each trial's numbers
            kind = str(t.user_attrs.get("fail_reason", "no reason recorded")).split(":")[0].split(" at epoch")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    return StudyRun(
        sampler=sampler or str(study.user_attrs.get("sampler")),
        pruner=pruner or str(study.user_attrs.get("pruner")),
        seed=seed,
        n_trials=n_trials,
        seconds=seconds,
        best=float(study.best_value),
        enqueued=enqueued[0] if enqueued else None,
        epochs=sum(len(t.intermediate_values) for t in trials),
        states=states,
        fail_reasons=reasons,
        storage=f"sqlite:///{tmp / 'hpo.db'}",
    )


def copy_last_baseline() -> float:
    """Copy-the-last-frame PSNR on the validation video the small profile's trials are scored on."""
    from hpo.spec import load_spec
    from model.metrics import copy_last_psnr
    from model.synth import synthetic_data

    config = load_spec("vp-bo", "small").base_config()
    return float(copy_last_psnr(synthetic_data(config).val.frames))


def study_machine() -> str:
    import torch

    return machine(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"optuna {optuna.__version__}",
        f"Python {platform.python_version()}",
    )


def _fresh(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="study-", dir=parent))


def part_main(parent: Path) -> list[str]:
    baseline = copy_last_baseline()
    r = run_study(50, None, None, None, _fresh(parent))
    ok_time = r.seconds < 600
    ok_base = r.best >= baseline + 3.0
    ok_enq = r.enqueued is not None and r.best > r.enqueued
    enq = f"{r.enqueued:.2f} dB" if r.enqueued is not None else "n/a (did not complete)"
    return [
        "### `hpo run --study vp-bo --n-trials 50` on the embedded defaults",
        "",
        f"Sampler {r.sampler}, pruner {r.pruner}, spec seed; SQLite in a fresh folder; small profile on the "
        "built-in synthetic set; CPU.",
        "",
        "| wall time (start to summary) | trials by state | epochs trained | best val PSNR | copy-last | "
        "enqueued report config |",
        "|---|---|---|---|---|---|",
        f"| **{r.seconds / 60:.1f} min** | {_states(r.states)} | {r.epochs} of {50 * _epochs()} | "
        f"**{r.best:.2f} dB** | {baseline:.2f} dB | {enq} |",
        "",
        f"- under 10 minutes: {'met' if ok_time else 'missed'} ({r.seconds:.0f} s)",
        f"- best at least 3 dB above copy-last: {'met' if ok_base else 'missed'} ({r.best - baseline:+.2f} dB)",
        f"- best above the enqueued report config: {'met' if ok_enq else 'missed'}",
        f"- failed trials by reason (FAIL does not consume the budget): {_reasons(r.fail_reasons)}",
        "",
    ]


def part_pruning(parent: Path, trials: int, seeds: list[int]) -> list[str]:
    from heldout import retrain_trial  # bench/, beside this script
    from replay_pruning import best_within  # bench/, beside this script

    from hpo.results import trial_config

    rows = [
        "| pruner | seed | epochs trained | best val PSNR | its config over training seeds 1-4 | wall time | states |",
        "|---|---|---|---|---|---|---|",
    ]
    # The spec's pruner for the small profile (`spec`: no --pruner flag) against none, same sampler and seeds.
    runs: dict[str, list[StudyRun]] = {"spec": [], "none": []}
    worth: dict[str, list[float]] = {"spec": [], "none": []}
    same_cost: list[float] = []  # none's best over its first trials within the pruned study's epochs
    for seed in seeds:
        for pruner in ("spec", "none"):  # interleaved, so machine noise hits both
            r = run_study(trials, "tpe", None if pruner == "spec" else pruner, seed, _fresh(parent))
            runs[pruner].append(r)
            # One training run flatters the best trial (the winner's curse): retrain its config with seeds 1-4
            # on the same data, and compare the two studies' picks by the mean.
            study = optuna.load_study(study_name="vp-bo", storage=r.storage)
            seed0 = trial_config(study, study.best_trial).seed
            values = retrain_trial(study, study.best_trial, [seed0 + i for i in range(RETRAIN_SEEDS)])
            worth[pruner].append(finite_mean(values))
            if pruner == "none":
                same_cost.append(best_within(study.get_trials(deepcopy=False), runs["spec"][-1].epochs)[0])
            rows.append(
                f"| {r.pruner} | {seed} | {r.epochs} | {r.best:.2f} dB | {summary(values)} | {r.seconds:.0f} s | "
                f"{_states(r.states)} |"
            )
    pr, no = runs["spec"], runs["none"]
    name = pr[0].pruner
    spent, unpruned = sum(r.epochs for r in pr), sum(r.epochs for r in no)
    epoch_ratio = spent / unpruned
    gap = statistics.mean(r.best for r in pr) - statistics.mean(r.best for r in no)
    worth_gap = statistics.mean(worth["spec"]) - statistics.mean(worth["none"])
    same_gap = finite_mean([r.best - v for r, v in zip(pr, same_cost, strict=True)])
    return [
        f"### Pruning's worth: {name} vs none (tpe, {trials} trials, seeds {', '.join(map(str, seeds))})",
        "",
        *rows,
        "",
        f"Epochs with {name} / without: **{epoch_ratio:.3f}** ({spent} of {unpruned}; target at most 0.5: "
        f"{'met' if epoch_ratio <= 0.5 else 'missed'}); mean best PSNR difference **{gap:+.2f} dB** "
        f"(target within 0.3 dB, or better: {'met' if gap >= -0.3 else 'missed'}). The best configs retrained "
        f"with training seeds 1-4: {name}'s picks minus none's, **{worth_gap:+.2f} dB** on the mean. At the same "
        f"cost (none's best over its first trials within {name}'s epochs of that seed: "
        f"{', '.join(f'{v:.2f}' for v in same_cost)} dB): {name} **{same_gap:+.2f} dB** on the mean best.",
        "",
    ]


def part_samplers(parent: Path, trials: int, seeds: list[int], samplers: list[str]) -> list[str]:
    best: dict[str, list[float]] = {s: [] for s in samplers}
    secs: dict[str, list[float]] = {s: [] for s in samplers}
    pruner = ""
    for seed in seeds:
        for sampler in samplers:
            r = run_study(trials, sampler, None, seed, _fresh(parent))  # the spec's pruner
            pruner = r.pruner
            best[sampler].append(r.best)
            secs[sampler].append(r.seconds)
    rows = [
        "| sampler | best val PSNR per seed | median | mean | wall time per study (mean) |",
        "|---|---|---|---|---|",
    ]
    for s in sorted(samplers, key=lambda s: -statistics.median(best[s])):
        rows.append(
            f"| {s} | {', '.join(f'{b:.2f}' for b in best[s])} | **{statistics.median(best[s]):.2f}** | "
            f"{statistics.mean(best[s]):.2f} | {statistics.mean(secs[s]):.0f} s |"
        )
    return [
        f"### Samplers on the same budget ({trials} trials, pruner {pruner}, seeds {', '.join(map(str, seeds))})",
        "",
        *rows,
        "",
    ]


def finite_mean(values: list[float]) -> float:
    """Mean over the seeds that did not diverge (NaN when none did not)."""
    ok = [v for v in values if math.isfinite(v)]
    return statistics.mean(ok) if ok else math.nan


def summary(values: list[float]) -> str:
    """'mean ± sd (min-max)' over the finite values, with how many diverged (NaN)."""
    ok = [v for v in values if math.isfinite(v)]
    if not ok:
        return "all diverged"
    sd = statistics.stdev(ok) if len(ok) > 1 else 0.0
    text = f"{statistics.mean(ok):.2f} ± {sd:.2f} ({min(ok):.2f}-{max(ok):.2f})"
    return text + (f", {len(values) - len(ok)} diverged" if len(ok) < len(values) else "")


def _states(states: dict[str, int]) -> str:
    return ", ".join(f"{n} {k.lower()}" for k, n in sorted(states.items()))


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])) or "none"


def _epochs() -> int:
    from hpo.spec import load_spec

    return load_spec("vp-bo", "small").base_config().epochs


def write_part(path: Path, name: str, header: list[str], body: list[str]) -> None:
    """Replace subsection `name` (between its markers) of this script's section, creating what is missing."""
    begin, end = f"<!-- bench_study:{name} -->", f"<!-- /bench_study:{name} -->"
    block = "\n".join([begin, *header, *body, end])
    text = path.read_text() if path.exists() else HEADER
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\nWritten by `bench/bench_study.py`.\n"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        at = len(text) if nxt < 0 else nxt + 1
        text = text[:at].rstrip("\n") + "\n\n" + block + "\n" + ("\n" + text[at:] if nxt >= 0 else "")
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("main", "pruning", "samplers", "all"))
    p.add_argument("--trials", type=int, default=20, help="budget of each pruning/sampler study (default 20)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="study seeds (pruning: 0 1; samplers: 0 1 2)")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--dry", action="store_true", help="print the markdown, write nothing")
    args = p.parse_args()
    parts = ("main", "pruning", "samplers") if args.part == "all" else (args.part,)
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        for part in parts:
            started = time.perf_counter()
            load = loadavg()
            if part == "main":
                body = part_main(Path(tmp))
            elif part == "pruning":
                body = part_pruning(Path(tmp), args.trials, args.seeds or [0, 1])
            else:
                body = part_samplers(Path(tmp), args.trials, args.seeds or [0, 1, 2], args.samplers)
            cmd = "python bench/bench_study.py " + shlex.join(
                [part, *(["--trials", str(args.trials)] if part != "main" else [])]
                + (["--seeds", *map(str, args.seeds)] if args.seeds and part != "main" else [])
                + (["--samplers", *args.samplers] if part == "samplers" and args.samplers != list(SAMPLERS) else [])
            )
            header = [
                f"Command: `{cmd}`  ",
                f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
                f"Machine: {study_machine()}  ",
                f"Load average before / after: {load} / {loadavg()}; part took "
                f"{(time.perf_counter() - started) / 60:.1f} min",
                "",
            ]
            print("\n".join(header + body))
            if not args.dry:
                write_part(args.results, part, header, body)


if __name__ == "__main__":
    main()
