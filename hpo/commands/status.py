"""`hpo status [--study NAME] [-f json|table|yaml]`: every study's trials by state, best value, what runs now."""

from __future__ import annotations

import argparse
from typing import Any

import optuna

from hpo import results
from hpo.commands.common import add_format, add_storage, add_study, render
from hpo.confirm import companion_name, is_companion, load_confirmation
from hpo.metric import metric_name, value_text
from hpo.reaper import reap_stale
from hpo.storage import mask_url, open_storage, resolve_source, resolve_url


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="trials by state, best value and running trials per study")
    add_study(p, required=False, help="only this study (default: every study in the storage)")
    add_storage(p)
    add_format(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = resolve_url(args.storage)
    source = resolve_source(args.storage)[1]
    storage = open_storage(url, create=False)  # reads (and reaps): never creates a storage
    every = results.study_names(storage)
    names = [results.load(storage, args.study).study_name] if args.study else [n for n in every if not is_companion(n)]
    studies = []
    for name in names:
        entry = _study(results.load(storage, name))
        if companion_name(name) in every:  # its confirmation runs: a study of their own (hpo.confirm)
            entry["confirmation_runs"] = _study(results.load(storage, companion_name(name)))
        entry["confirmation"] = results.confirmation_lines(load_confirmation(storage, name), None)
        studies.append(entry)
    if args.format:
        data = {"storage": mask_url(url), "storage_from": source, "studies": studies}
        rows = [_row(s) for s in studies] + [_row(s["confirmation_runs"]) for s in studies if "confirmation_runs" in s]
        print(render(data, args.format, rows))
        return 0
    print(f"storage {mask_url(url)} (from {source}): {len(names)} stud{'y' if len(names) == 1 else 'ies'}")
    for entry in studies:
        _print_study(entry, entry["study"])
        if "confirmation_runs" in entry:
            _print_study(entry["confirmation_runs"], "  confirmation runs")
        for line in entry["confirmation"]:
            print(f"  {line}")
    return 0


def _study(study: optuna.Study) -> dict[str, Any]:
    """One study's status as plain data (what -f prints): counts of non-empty states, best, running trials."""
    reaped = reap_stale(study)  # Optuna reaps only when a live worker starts a trial
    st = results.status(study)
    return {
        "study": st.name,
        "direction": st.direction,
        "metric": metric_name(study),
        "trials": {k.lower(): v for k, v in st.counts.items() if v},
        "best_value": st.best_value,
        "best_trial": st.best_number,
        "running": [{"trial": number, "worker": where} for number, where in st.running],
        "reaped": reaped,
    }


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    """A study as one row of `-f table`: a column per trial state."""
    row = {"study": entry["study"], "metric": entry["metric"] or "value"}
    row.update({state: entry["trials"].get(state, 0) for state in ("complete", "pruned", "fail", "running")})
    return {**row, "best_value": entry["best_value"], "best_trial": entry["best_trial"]}


def _print_study(entry: dict[str, Any], label: str) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in entry["trials"].items())
    value = entry["best_value"]
    best = f"{value_text(value, entry['metric'])} (trial {entry['best_trial']})" if value is not None else "-"
    reaped = f"; reaped {entry['reaped']} stale" if entry["reaped"] else ""
    print(f"{label}: {counts or 'no trials'}; best {best}{reaped}")
    for r in entry["running"]:
        print(f"  running: trial {r['trial']} on {r['worker']}")
