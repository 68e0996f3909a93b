"""A trial survives its worker (issue 23): `kill -9` of a worker at epoch k of E, and what its retry spends.

Three studies of a spec (the smoke spec by default: a tiny model, so the bench takes a minute or two even on a
busy 2-core box; `--study vp-bo --profile small` for the small profile), `--set epochs=E`, `--pruner none` so that
every trial trains to the end, `--no-confirm`, each on a fresh journal storage in a temp folder, `--n-trials 2`,
`--threads 1`:

1. uninterrupted: one worker runs trials 0 and 1;
2. killed: a worker is killed with SIGKILL once trial 1 has reported epoch k (its checkpoint is then written);
   a second worker reaps it and runs the retry, which resumes from the checkpoint;
3. killed, checkpoint removed: the same, but the checkpoint is deleted before the second worker starts, so the
   retry trains from epoch 1 as every retry did before trial checkpoints.

The kill lands in the budget's last trial, so the retry is the study's last trial in both: no trial is sampled
after it and the studies are comparable trial for trial. Reported: the epochs and seconds each retry spent,
whether the best (trial params and value) equals the uninterrupted study's bit for bit, and the checkpoint's
size on disk and write time (also for the lab model's default dims).

    python bench/bench_resume.py [--study smoke] [--profile NAME] [--epochs 12] [--kill-at 6] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from common import RESULTS, loadavg, machine, publish, run_facts, section_header, verdict

from hpo.artifacts import ARTIFACTS_ENV
from hpo.storage import open_storage
from hpo.trial_checkpoints import RESUMED_ATTR, study_checkpoints
from model.checkpoint import save_checkpoint
from model.config import TrainConfig
from model.net import CVAE
from model.train import make_optimizer

HEADING = "## A trial survives its worker (issue 23)"
STUDY = "bench-resume"  # every case's study name (--study-name)
SPEC: list[str] = ["--study", "smoke"]  # --study and --profile, set by main
SETS: list[str] = []  # more --set FIELD=VALUE, set by main


def _worker(tmp: Path, url: str, epochs: int, tag: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "hpo", "run", *SPEC, "--study-name", STUDY, "--n-trials", "2", "--pruner", "none"]
    cmd += ["--no-confirm", "--set", f"epochs={epochs}", *SETS, "--threads", "1", "--storage", url, "-q"]
    env = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", ARTIFACTS_ENV)}  # artifacts beside hpo.log
    with (tmp / f"{tag}.log").open("w") as log:
        return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=open_storage(url, heartbeat=False))


def _kill_at(tmp: Path, url: str, proc: subprocess.Popen[bytes], trial: int, epoch: int) -> dict[str, Any]:
    """SIGKILL `proc` once `trial` has reported `epoch`; the checkpoint's size at that moment."""
    while proc.poll() is None:
        try:
            trials = _study(url).trials
        except KeyError:
            trials = []
        if len(trials) > trial and len(trials[trial].intermediate_values) >= epoch:
            running = list((study_checkpoints(url, STUDY) / "running").glob("*.pt"))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return {"checkpoint_bytes": sum(p.stat().st_size for p in running)}
        time.sleep(0.05)
    raise SystemExit(f"the worker ended before trial {trial} reached epoch {epoch}: {(tmp / 'w0.log').read_text()}")


def run_case(tmp: Path, epochs: int, kill_at: int | None, drop_checkpoint: bool = False) -> dict[str, Any]:
    url = f"journal:///{tmp / 'hpo.log'}"
    started = time.perf_counter()
    first = _worker(tmp, url, epochs, "w0")
    out: dict[str, Any] = {}
    if kill_at is None:
        if first.wait() != 0:
            raise SystemExit((tmp / "w0.log").read_text())
    else:
        out.update(_kill_at(tmp, url, first, 1, kill_at))
        if drop_checkpoint:
            for path in (study_checkpoints(url, STUDY) / "running").glob("*.pt"):
                path.unlink()
        retry_started = time.perf_counter()
        second = _worker(tmp, url, epochs, "w1")
        if second.wait() != 0:
            raise SystemExit((tmp / "w1.log").read_text())
        out["second_worker_s"] = time.perf_counter() - retry_started
    study = _study(url)
    best = study.best_trial
    last = study.trials[-1]
    out["killed_trial_value"] = last.value  # the uninterrupted study's trial 1, or the killed trial's retry
    kept = study_checkpoints(url, STUDY) / "weights"
    out.update(
        wall_s=time.perf_counter() - started,
        best_value=best.value,
        best_params=best.params,
        trials=[(t.number, t.state.name) for t in study.trials],
        last_seconds=float(last.user_attrs.get("seconds", float("nan"))),
        resumed=last.user_attrs.get(RESUMED_ATTR),
        epochs_trained=epochs - int(last.user_attrs.get(RESUMED_ATTR, 0)),
        kept_bytes=[p.stat().st_size for p in sorted(kept.glob("*.pt"))],
        running_left=len(list((study_checkpoints(url, STUDY) / "running").glob("*.pt"))),
    )
    return out


def lab_checkpoint(tmp: Path) -> tuple[int, list[float]]:
    """A trial checkpoint of the lab model (default dims: weights, Adam's two moments): its size, and the seconds
    of five atomic writes (`save_checkpoint`, fsync included)."""
    config = TrainConfig()
    model = CVAE.from_config(config)
    optimizer = make_optimizer("Adam", model.parameters(), 1e-3, config)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the moments
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": config.to_dict()}
    path, seconds = tmp / "lab.pt", []
    for _ in range(5):
        t0 = time.perf_counter()
        save_checkpoint(path, state)
        seconds.append(time.perf_counter() - t0)
    return path.stat().st_size, sorted(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="smoke", help="spec name or path (default smoke)")
    parser.add_argument("--profile", help="spec profile (default: none for smoke)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=None,
        metavar="FIELD=VALUE",
        help="more --set for the workers (default synth_train_frames=120: epochs long enough to outweigh start-up)",
    )
    parser.add_argument("--epochs", type=int, default=12, help="E: epochs of every trial")
    parser.add_argument("--kill-at", type=int, default=6, help="k: the epoch after which the worker is killed")
    parser.add_argument("--out", type=Path, default=None, help=f"write the section into this file (e.g. {RESULTS})")
    args = parser.parse_args(argv)
    os.environ.pop(ARTIFACTS_ENV, None)  # the workers' artifact folder: beside each case's hpo.log
    SETS[:] = [x for kv in (args.sets or ["synth_train_frames=120"]) for x in ("--set", kv)]
    SPEC[:] = ["--study", args.study, *(["--profile", args.profile] if args.profile else [])]
    facts = run_facts(argv)
    started = time.perf_counter()
    cases = {}
    for name, kill, drop in (
        ("uninterrupted", None, False),
        ("killed", args.kill_at, False),
        ("no checkpoint", args.kill_at, True),
    ):
        with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
            cases[name] = run_case(Path(tmp), args.epochs, kill, drop)
            print(f"{name}: {cases[name]}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        lab = lab_checkpoint(Path(tmp))
    r: dict[str, Any] = {**facts, "machine": machine("journal storage"), "load_after": loadavg()}
    r["wall_s"] = time.perf_counter() - started
    r["spec"] = " ".join([*SPEC[1:], *SETS])
    publish(_section(r, cases, args.epochs, args.kill_at, lab), args.out, HEADING)


def _section(
    r: dict[str, Any], cases: dict[str, dict[str, Any]], epochs: int, k: int, lab: tuple[int, list[float]]
) -> str:
    whole, killed, cold = cases["uninterrupted"], cases["killed"], cases["no checkpoint"]
    same = killed["best_value"] == whole["best_value"] and killed["best_params"] == whole["best_params"]
    same_trial = killed["killed_trial_value"] == whole["killed_trial_value"] == cold["killed_trial_value"]
    spent_ok = killed["epochs_trained"] == epochs - k and cold["epochs_trained"] == epochs
    lines = section_header(HEADING, r, "other work on the box: the seconds are indicative")
    lines += [
        f"Spec `{r['spec']}`, `--set epochs={epochs}`, `--pruner none`, `--n-trials 2`, `--threads 1`; the worker "
        f"is killed with SIGKILL once trial 1 has reported epoch {k} of {epochs}, and a second worker takes the retry.",
        "",
        "| study | trials (state) | retry resumed after epoch | retry epochs | retry s | its value | best value |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in cases.items():
        trials = ", ".join(f"{n} {s}" for n, s in c["trials"])
        resumed = "-" if c["resumed"] is None else str(c["resumed"])
        spent = "-" if name == "uninterrupted" else str(c["epochs_trained"])
        lines.append(
            f"| {name} | {trials} | {resumed} | {spent} | {c['last_seconds']:.1f} | {c['killed_trial_value']!r} | "
            f"{c['best_value']!r} |"
        )
    lines += [
        "",
        f"- The retry spends E - k = {epochs - k} epochs with its checkpoint and E = {epochs} without it (every "
        f"retry before trial checkpoints): {verdict(spent_ok)}. 'retry s' is the retry's own time "
        f"(user attr `seconds`), for the uninterrupted study its trial 1's.",
        f"- The killed trial's retry ends with the uninterrupted trial's value bit for bit "
        f"({whole['killed_trial_value']!r}): {verdict(same_trial)}. The killed study ends with the same best as the "
        f"uninterrupted one, params and value ({killed['best_value']!r}): {verdict(same)}.",
        f"- Disk: a running trial's checkpoint (model, Adam's moments, scheduler, RNG streams, per-epoch metrics) is "
        f"{killed['checkpoint_bytes'] / 1e6:.2f} MB on this spec and {lab[0] / 1e6:.1f} MB for the lab model's "
        f"default dims (1,585,620 parameters: 3 x 6.3 MB of weights and moments), whose atomic write took "
        f"{lab[1][0]:.2f}-{lab[1][-1]:.2f} s here (5 writes, fsync included); one per running trial, removed "
        f"when it ends. Kept final weights are the same files, `keep_weights` of them (default 3): "
        f"{len(killed['kept_bytes'])} here, {sum(killed['kept_bytes']) / 1e6:.2f} MB. Running checkpoints left "
        f"after the studies: {killed['running_left']} and {cold['running_left']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
