"""`hpo status [--study NAME]`: every study's trials by state, best value, and what runs now."""

from __future__ import annotations

import argparse

import optuna

from hpo import results
from hpo.commands.common import add_storage, add_study
from hpo.confirm import companion_name, is_companion, load_confirmation
from hpo.reaper import reap_stale
from hpo.storage import mask_url, open_storage, resolve_url


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="trials by state, best PSNR and running trials per study")
    add_study(p, required=False, help="only this study (default: every study in the storage)")
    add_storage(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = resolve_url(args.storage)
    storage = open_storage(url, create=False)  # reads (and reaps): never creates a storage
    every = results.study_names(storage)
    names = [results.load(storage, args.study).study_name] if args.study else [n for n in every if not is_companion(n)]
    print(f"storage {mask_url(url)}: {len(names)} stud{'y' if len(names) == 1 else 'ies'}")
    for name in names:
        _print_study(results.load(storage, name), name)
        if companion_name(name) in every:  # its confirmation runs: a study of their own (hpo.confirm)
            _print_study(results.load(storage, companion_name(name)), "  confirmation runs")
        for line in results.confirmation_lines(load_confirmation(storage, name), None):
            print(f"  {line}")
    return 0


def _print_study(study: optuna.Study, label: str) -> None:
    reaped = reap_stale(study)  # Optuna reaps only when a live worker starts a trial
    st = results.status(study)
    counts = ", ".join(f"{k.lower()} {v}" for k, v in st.counts.items() if v)
    best = f"{st.best_value:.2f} dB (trial {st.best_number})" if st.best_value is not None else "-"
    print(f"{label}: {counts or 'no trials'}; best {best}" + (f"; reaped {reaped} stale" if reaped else ""))
    for number, where in st.running:
        print(f"  running: trial {number} on {where}")
