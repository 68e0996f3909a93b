"""Storage and worker benchmark (issue 4): what the shared budget, locks and heartbeats cost, and what they buy.

1. Storage overhead per trial on SQLite, journal and PostgreSQL: our worker path (`run_worker`: reap, claim
   a slot under the study lock with the 7 vp-bo parameters suggested, 10 reported epochs under a heartbeat,
   tell) against plain Optuna doing the same calls (`study.ask`, the 7 suggestions, `trial.report` x10,
   `study.tell`) on a plain Optuna storage. Same process, random sampler on both sides (the sampler is not
   what is measured), rounds interleaved (ours first on even rounds, plain first on odd), medians. Ours is
   also given as a share of one small-profile trial (`hpo run --study vp-bo`, measured here unless
   `--trial-seconds` is given).
2. Trials per minute with 1 and 2 worker processes (tests/workers/cheap_worker.py: 5 epochs of a 0.2 s
   sleep per trial, so the objective needs no CPU and the workers can overlap on a small box).
3. Time from `kill -9` of a worker mid-trial to the retry of its trial RUNNING on another worker
   (PostgreSQL; the survivor polls every 1 s like `hpo run`), with the default heartbeat settings and with
   HPO_HEARTBEAT_INTERVAL=1 / HPO_HEARTBEAT_GRACE=3.

PostgreSQL: a database `hpo_bench_<random>` is created on --pg-host/--pg-port (trust or ~/.pgpass auth, as
the OS user or `postgres`, via the admin database `postgres` or `test`) and dropped at the end; without a
server the PostgreSQL rows are skipped.

    python bench/bench_storage.py            # full run (~6-8 min on a 2-core CPU); writes bench/RESULTS.md
    python bench/bench_storage.py --quick    # smoke check (few rounds, no small-profile trial); writes nothing
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from common import RESULTS, loadavg, machine, publish, run_facts, section_header, verdict
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy import event

from hpo.optuna_private import backend_of
from hpo.space import suggest
from hpo.spec import load_spec
from hpo.storage import open_storage
from hpo.worker import run_worker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from support import CheapWorker, scratch_database  # noqa: E402  (tests/support.py: as the tests use them)

SECTION = "## Storage and workers (issue 4)"
EPOCHS = 10  # reported epochs per trial in the overhead measurement
TARGET_RATIO, TARGET_SHARE, TARGET_SPEEDUP = 1.2, 0.01, 1.8
CHEAP_EPOCHS, CHEAP_EPOCH_S = 5, 0.2  # cheap_worker objective: 1 s of sleep per trial
POLL_S = 1.0  # how often a waiting worker looks for a freed slot (run_worker's default, what `hpo run` uses)


# --- 1. storage overhead per trial ------------------------------------------------------------------------


def plain_storage(url: str) -> BaseStorage:
    """What a plain Optuna user opens for the same URL: no heartbeat, no retries."""
    if url.startswith("journal:///"):
        return JournalStorage(JournalFileBackend(url[len("journal:///") :]))
    return RDBStorage(url)


def _objective(trial: optuna.Trial) -> float:
    for step in range(EPOCHS):
        trial.report(1.0 / (step + 1), step)
    return 1.0


def ours_round(study: optuna.Study, space: dict[str, BaseDistribution], k: int) -> float:
    """Seconds per trial of `k` trials through `run_worker`, from its start to the k-th trial's end.

    The worker's last look at the budget (once per worker, after its final trial) is left out: steady state.
    """
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    ends: list[float] = []
    started = time.perf_counter()
    run_worker(
        study, _objective, done + k, distributions=space, on_trial_end=lambda s, f: ends.append(time.perf_counter())
    )
    assert len(ends) == k, f"ran {len(ends)} trials, expected {k}"
    return (ends[-1] - started) / k


def plain_round(study: optuna.Study, space: dict[str, BaseDistribution], k: int) -> float:
    started = time.perf_counter()
    for _ in range(k):
        trial = study.ask()
        for name, dist in space.items():
            suggest(trial, name, dist)
        for step in range(EPOCHS):
            trial.report(1.0 / (step + 1), step)
        study.tell(trial, 1.0)
    return (time.perf_counter() - started) / k


def bench_overhead(urls: dict[str, tuple[str, str]], rounds: int, k: int) -> dict[str, dict[str, Any]]:
    """Per storage kind: ms per trial of ours and plain (medians over rounds), their ratio and paired ratio.

    `urls` maps a kind to (URL of our study, URL of the plain one): separate files for SQLite and journal, so
    neither side waits on the other's file lock; one database for PostgreSQL.
    """
    space = load_spec("vp-bo", "small").space
    rounds_of = {"ours": ours_round, "plain": plain_round}
    studies: dict[str, dict[str, optuna.Study]] = {}
    for kind, (ours_url, plain_url) in urls.items():
        studies[kind] = {
            "ours": optuna.create_study(
                storage=open_storage(ours_url), study_name="ours", sampler=optuna.samplers.RandomSampler(seed=0)
            ),
            "plain": optuna.create_study(
                storage=plain_storage(plain_url), study_name="plain", sampler=optuna.samplers.RandomSampler(seed=0)
            ),
        }
        for side, study in studies[kind].items():  # one untimed warm-up trial: connections, caches, imports
            rounds_of[side](study, space, 1)
    statements: dict[tuple[str, str], int] = {}
    for kind, pair in studies.items():
        for side, study in pair.items():
            backend = backend_of(study)
            if isinstance(backend, RDBStorage):  # every statement on the engine, the heartbeat thread's included
                statements[kind, side] = 0
                event.listen(backend.engine, "before_cursor_execute", _counter(statements, (kind, side)))
    times: dict[str, dict[str, list[float]]] = {kind: {"ours": [], "plain": []} for kind in studies}
    for r in range(rounds):
        for kind, pair in studies.items():
            for side in ("ours", "plain") if r % 2 == 0 else ("plain", "ours"):
                times[kind][side].append(rounds_of[side](pair[side], space, k))
        print(f"   round {r + 1}/{rounds}", flush=True)
    out: dict[str, dict[str, Any]] = {}
    for kind, t in times.items():
        ours_ms, plain_ms = 1000 * statistics.median(t["ours"]), 1000 * statistics.median(t["plain"])
        out[kind] = {
            "ours_ms": ours_ms,
            "plain_ms": plain_ms,
            "ratio": ours_ms / plain_ms,
            "paired": statistics.median(o / p for o, p in zip(t["ours"], t["plain"], strict=True)),
            "trials": len(studies[kind]["ours"].trials),
        }
        if (kind, "ours") in statements:
            out[kind]["sql"] = tuple(statements[kind, side] / (rounds * k) for side in ("ours", "plain"))
    return out


def _counter(counts: dict[tuple[str, str], int], key: tuple[str, str]) -> Callable[..., None]:
    def count(*args: Any) -> None:
        counts[key] += 1

    return count


def small_trial_seconds(tmp: Path) -> tuple[float, str]:
    """Seconds of a small-profile trial: `hpo run --study vp-bo --n-trials 2` on a fresh SQLite file.

    The median over its COMPLETE trials (a pruned or failed one stops early); every trial is listed in the note.
    """
    db = tmp / "small.db"
    cmd = [sys.executable, "-m", "hpo", "run", "--study", "vp-bo", "--n-trials", "2", "-q"]
    cmd += ["--storage", f"sqlite:///{db}"]
    env = {**os.environ, "HPO_ARTIFACTS": str(tmp / "small-artifacts")}
    env.pop("HPO_STORAGE", None)
    started = time.perf_counter()
    subprocess.run(cmd, cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    trials = [
        (t.state.name, (t.datetime_complete - t.datetime_start).total_seconds())
        for t in optuna.load_study(study_name="vp-bo", storage=f"sqlite:///{db}").trials
        if t.datetime_complete and t.datetime_start
    ]
    complete = [s for state, s in trials if state == "COMPLETE"] or [s for _, s in trials]
    listed = ", ".join(f"{s:.1f} s {state}" for state, s in trials)
    return statistics.median(complete), (
        f"median of the COMPLETE trials of `hpo run --study vp-bo --n-trials 2 -q --storage sqlite:///...` run here "
        f"(small profile, torch's default threads): trials {listed}; {wall:.0f} s for the whole command"
    )


# --- 2. trials per minute with 1 and 2 workers --------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("HPO_STORAGE", None)
    return env


def bench_throughput(url: str, workers: int, n_trials: int, tmp: Path, tag: str) -> dict[str, float]:
    """Trials per minute of `workers` processes sharing `n_trials`, from the first trial's start to the last end."""
    study = optuna.create_study(storage=open_storage(url), study_name=tag, direction="minimize")
    go = tmp / f"{tag}.go"
    opts = ["--epochs", str(CHEAP_EPOCHS), "--epoch-seconds", str(CHEAP_EPOCH_S), "--poll", str(POLL_S)]
    opts += ["--go", str(go), "--no-prune"]  # every trial sleeps its full second
    procs = [CheapWorker(tmp, f"{tag}-{i}", url, n_trials, i, *opts, study=tag, env=_env()) for i in range(workers)]
    for w in procs:
        w.wait_for("ready", timeout=120)
    go.touch()
    for w in procs:
        if w.proc.wait(600) != 0:
            raise RuntimeError(f"worker {tag} failed: {w.out.read_text()[-500:]}")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == n_trials
    first = min(t.datetime_start for t in trials if t.datetime_start)
    last = max(t.datetime_complete for t in trials if t.datetime_complete)
    span = (last - first).total_seconds()
    return {"trials": len(trials), "seconds": span, "per_min": 60 * len(trials) / span}


# --- 3. kill -9 to retry --------------------------------------------------------------------------------------


def bench_kill_to_retry(url: str, tmp: Path, tag: str, env_extra: dict[str, str], interval: float) -> float:
    """Seconds from SIGKILL of a worker mid-trial to the retry of its trial RUNNING on the survivor."""
    study = optuna.create_study(storage=open_storage(url), study_name=tag, direction="minimize")
    env = _env(**env_extra)
    long_trial = ("--epochs", "100000", "--epoch-seconds", "0.1", "--poll", str(POLL_S))
    victim = CheapWorker(tmp, f"{tag}-victim", url, 1, 0, *long_trial, study=tag, env=env)
    victim.wait_for("start ", timeout=120)
    survivor = CheapWorker(tmp, f"{tag}-survivor", url, 1, 1, *long_trial, study=tag, env=env)
    time.sleep(random.uniform(0.5, 0.5 + interval))  # any phase of the victim's heartbeat
    killed_at = datetime.datetime.now()
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            retries = [t for t in running if t.system_attrs.get("retry_history")]
            if retries and retries[0].datetime_start is not None:
                return (retries[0].datetime_start - killed_at).total_seconds()
            time.sleep(0.1)
        raise RuntimeError(f"no retry RUNNING within 300 s ({tag})")
    finally:
        survivor.proc.kill()
        survivor.proc.wait()


# --- report -----------------------------------------------------------------------------------------------


def report(r: dict[str, Any]) -> str:
    note = "cores shared with other jobs: expect noise; the overhead rounds are interleaved so it hits both sides"
    lines = section_header(SECTION, r, note) + [
        f"### Storage overhead per trial ({r['rounds']} rounds x {r['k']} trials, medians)",
        "",
        f"Ours: `run_worker` (reap stale trials, claim under the study lock with the 7 vp-bo small-profile "
        f"parameters suggested, {EPOCHS} `trial.report` under the heartbeat thread, tell) on `open_storage` "
        f"(heartbeat {r['heartbeat']}). Plain: `study.ask` + the same 7 `suggest_*` + {EPOCHS} `trial.report` + "
        "`study.tell` on a plain Optuna storage of the same kind. Random sampler on both sides; PostgreSQL on "
        "127.0.0.1 (same host). Ratio = median ours / median plain; paired = median of the per-round ratios.",
        "",
        "| storage | ours ms/trial | plain ms/trial | ours/plain | paired | ours as % of a small-profile trial "
        "| SQL statements/trial ours / plain | trials in the study at the end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    trial_s = r.get("small_trial_s")
    for kind, d in r["overhead"].items():
        share = f"{100 * d['ours_ms'] / 1000 / trial_s:.3f}%" if trial_s else "n/a"
        sql = f"{d['sql'][0]:.0f} / {d['sql'][1]:.0f}" if "sql" in d else "n/a (no SQL)"
        lines.append(
            f"| {kind} | {d['ours_ms']:.1f} | {d['plain_ms']:.1f} | {d['ratio']:.2f}x | {d['paired']:.2f}x | "
            f"{share} | {sql} | {d['trials']} |"
        )
    lines += ["", f"Small-profile trial: {r['small_trial_note']}."]
    lines += [
        "",
        f"### Trials per minute, 1 vs 2 worker processes ({r['tp_trials']} trials)",
        "",
        f"tests/workers/cheap_worker.py: {CHEAP_EPOCHS} epochs of a {CHEAP_EPOCH_S} s sleep per trial (no CPU "
        "work, so two workers can overlap on a small box; no pruning), TPE with a constant liar, our claim path; "
        "workers start "
        "together after their imports; the rate is taken from the first trial's start to the last trial's end.",
        "",
        "| storage | 1 worker trials/min | 2 workers trials/min | speed-up |",
        "|---|---|---|---|",
    ]
    for kind, d in r["throughput"].items():
        lines.append(f"| {kind} | {d[1]['per_min']:.1f} | {d[2]['per_min']:.1f} | {d['speedup']:.2f}x |")
    lines += [
        "",
        "### kill -9 to retry (PostgreSQL)",
        "",
        "A worker is killed at a random phase of its heartbeat while its trial trains; a second worker that "
        f"waits for the budget (polling every {POLL_S:.0f} s, as `hpo run` does) reaps the stale trial and "
        "starts its retry. Time from the kill to the retry's start (its `datetime_start`).",
        "",
        "| heartbeat interval / grace | runs | median s | min | max |",
        "|---|---|---|---|---|",
    ]
    for name, times in r["kill"].items():
        lines.append(
            f"| {name} | {len(times)} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} |"
        )
    lines += ["", "### Targets", ""] + r["targets"] + ["", "### Notes", ""] + r["notes"]
    return "\n".join(lines) + "\n"


def targets_and_notes(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    targets, notes = [], []
    trial_s = r.get("small_trial_s")
    for kind, d in r["overhead"].items():
        targets.append(
            f"- {kind}: ours {d['ratio']:.2f}x plain Optuna, target <= {TARGET_RATIO}x: "
            f"{verdict(d['ratio'] <= TARGET_RATIO)}"
        )
        if trial_s:
            share = d["ours_ms"] / 1000 / trial_s
            targets.append(
                f"- {kind}: ours {100 * share:.3f}% of a small-profile trial, target < {100 * TARGET_SHARE:.0f}%: "
                f"{verdict(share < TARGET_SHARE)}"
            )
    for kind, d in r["throughput"].items():
        targets.append(
            f"- {kind}: 2 workers {d['speedup']:.2f}x the trials/min of 1, target >= {TARGET_SPEEDUP}x: "
            f"{verdict(d['speedup'] >= TARGET_SPEEDUP)}"
        )
    extras = ", ".join(f"{kind} {d['ours_ms'] - d['plain_ms']:+.1f} ms" for kind, d in r["overhead"].items())
    notes.append(
        f"- Ours over plain per trial: {extras}."
        " Per trial ours also takes and releases the study lock (a PostgreSQL advisory lock in autocommit, a "
        "file lock otherwise), counts the budget (on PostgreSQL and SQLite one `GROUP BY state` query in "
        "autocommit, where Optuna would load every trial; on the journal a read of the study's trials; "
        "plain's random sampler reads none), records the `worker` attr (host and pid) in the same write that "
        "creates the trial (a popped WAITING trial gets it as one more write), and runs one heartbeat thread "
        "from the claim to the end of the objective (its first beat is a write); it reaps stale trials at "
        "most once per heartbeat interval (one query when none is stale). On PostgreSQL commits and round "
        "trips are what cost (plain makes 19 commits per trial); the pool holds three connections, as many as"
        " a claim uses at once (lock, main thread, heartbeat; with two, every trial opened a new server "
        "connection: 1.22x before, 2026-12-03), and pings one only when it sat idle over 1 s (SQLAlchemy's "
        "`pool_pre_ping` pinged at every checkout, about 25 times a trial). The heartbeat cannot go: it is "
        "the crash detection."
    )
    notes.append(
        "- 2 workers: the claim (lock, count, sampler) is serialised across workers by design "
        "(docs/ARCHITECTURE.md, 'The worker protocol'); "
        "with 1 s trials its tens of ms keep the speed-up a little under 2x."
    )
    notes.append(
        "- kill -9 to retry: expected the grace period minus the time since the victim's last heartbeat (0 to "
        "one interval), plus up to one poll of the waiting worker: 20-31 s with the defaults, 2-4 s with 1 s / 3 s."
    )
    return targets, notes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke check: 3 rounds, 6 trials, 1 kill each; writes nothing")
    p.add_argument("--rounds", type=int, default=None, help="overhead rounds (default 10; 3 with --quick)")
    p.add_argument("--trials-per-round", type=int, default=5, help="trials per overhead round and side (default 5)")
    p.add_argument("--trial-seconds", type=float, help="seconds of a small-profile trial, instead of measuring one")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--results", type=Path, help=f"markdown file to update (default {RESULTS.name}; --quick: none)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 10)
    if args.rounds < 1 or args.trials_per_round < 1:
        p.error("--rounds and --trials-per-round must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    r: dict[str, Any] = {
        **run_facts(argv),
        "machine": machine(f"Python {platform.python_version()}", f"Optuna {optuna.__version__}"),
        "rounds": args.rounds,
        "k": args.trials_per_round,
    }
    from hpo.storage import heartbeat_settings

    interval, grace = heartbeat_settings()
    r["heartbeat"] = f"every {interval} s, stale after {grace} s"
    with (
        tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp_name,
        scratch_database(args.pg_host, args.pg_port, "hpo_bench_", ("postgres", "test")) as pg,
    ):
        tmp = Path(tmp_name)
        urls = {
            "SQLite": (f"sqlite:///{tmp / 'ours.db'}", f"sqlite:///{tmp / 'plain.db'}"),
            "journal": (f"journal:///{tmp / 'ours.log'}", f"journal:///{tmp / 'plain.log'}"),
        }
        if pg:
            urls["PostgreSQL"] = (pg, pg)
        else:
            print("no PostgreSQL server: its rows are skipped", flush=True)
        print("1. storage overhead per trial", flush=True)
        r["overhead"] = bench_overhead(urls, args.rounds, args.trials_per_round)
        if args.trial_seconds:
            r["small_trial_s"], r["small_trial_note"] = args.trial_seconds, f"{args.trial_seconds:.1f} s (given)"
        elif args.quick:
            r["small_trial_note"] = "not measured (--quick; give --trial-seconds)"
        else:
            print("   small-profile trial", flush=True)
            r["small_trial_s"], note = small_trial_seconds(tmp)
            r["small_trial_note"] = f"{r['small_trial_s']:.1f} s, {note}"

        print("2. trials per minute, 1 vs 2 workers", flush=True)
        n = 6 if args.quick else 20
        r["tp_trials"] = n
        r["throughput"] = {}
        tp_urls = {"journal": f"journal:///{tmp / 'throughput.log'}", **({"PostgreSQL": pg} if pg else {})}
        for kind, url in tp_urls.items():
            d: dict[Any, Any] = {}
            for workers in (1, 2):
                d[workers] = bench_throughput(url, workers, n, tmp, f"tp-{kind}-{workers}")
                print(f"   {kind} {workers} worker(s): {d[workers]['per_min']:.1f} trials/min", flush=True)
            d["speedup"] = d[2]["per_min"] / d[1]["per_min"]
            r["throughput"][kind] = d

        print("3. kill -9 to retry", flush=True)
        r["kill"] = {}
        if pg:
            reps = 1 if args.quick else 3
            settings = [
                (f"default ({interval} s / {grace} s)", {}, float(interval)),
                ("1 s / 3 s", {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_HEARTBEAT_GRACE": "3"}, 1.0),
            ]
            for name, env, beat in settings:
                times = []
                for i in range(reps):
                    times.append(bench_kill_to_retry(pg, tmp, f"kill-{beat:.0f}-{i}", env, beat))
                    print(f"   {name}: {times[-1]:.1f} s", flush=True)
                r["kill"][name] = times
        else:
            print("   skipped: no PostgreSQL server", flush=True)
    r["wall_s"] = time.perf_counter() - started
    r["load_after"] = loadavg()
    r["targets"], r["notes"] = targets_and_notes(r)
    publish(report(r), args.results or (None if args.quick else RESULTS), SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
