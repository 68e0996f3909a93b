"""`hpo retrain`: train an exported config to the final model, resumably, and write what a person looks at.

One run writes into its `out` folder:

- `last.pt` (every epoch), `best.pt` and `best-eNNNN.pt` for the `keep_best` best epochs by val PSNR (NNNN
  counts epochs from 1, as the console and metrics.json do)
  (written atomically by the trainer; `last.pt` is written last, so a killed run resumes from a consistent
  state and `--resume` reproduces the uninterrupted run exactly);
- `metrics.json`: per-epoch loss, beta, teacher forcing, val PSNR and stage, a summary per stage (main,
  fine-tune), and the final and best val PSNR;
- from the best checkpoint: `psnr_per_frame.png`, `val.gif` (predicted validation video beside the true one)
  and, when the data has a test split, `submission.csv` and `test-<id>.gif` (see model.predict).

`--seeds K` makes K such runs with seeds seed, seed+1, ... in out/seed-N and writes `seeds.json` with the
mean and standard deviation of their final val PSNR (the tuning playbook: rerun the best config with a few
seeds before adopting it; a gap smaller than the spread is noise).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import check_resumable, config_of, load_checkpoint, model_from_checkpoint, save_json
from model.config import TrainConfig, load_config
from model.data import DataCache
from model.dataset import DataSet
from model.errors import UsageError
from model.media import write_gif, write_psnr_plot
from model.predict import check_fields, ensure_writable_dir, write_test_outputs
from model.train import EpochHook, StepHook, best_name, evaluate, metrics_rows, train

__all__ = [
    "DEFAULT_OUT",
    "RESUME_FREE_FIELDS",
    "RunReport",
    "RetrainReport",
    "retrain",
    "retrain_config",
    "run_one",
    "stage_summary",
]

log = logging.getLogger(__name__)

DEFAULT_OUT = "runs/retrain"
# Run settings a resumed run may change (a moved data set, another GPU); every other field must match the
# checkpoint's, or the resumed run would not be the run it continues.
RESUME_FREE_FIELDS = ("out", "data", "cache_dir", "device", "compile", "time_chunk", "keep_best")

# (config, epochs already done) -> per-epoch hook. A hook that also has a method `on_step(step, steps)` (a
# model.train.StepHook, e.g. hpo.progress.EpochBar) gets the trainer's progress within each epoch too.
HookFactory = Callable[[TrainConfig, int], EpochHook]


@dataclass
class RunReport:
    out: Path
    seed: int
    final_val_psnr: float  # after the last epoch (what a study trial reports)
    best_val_psnr: float
    best_epoch: int  # counted from 1, as everything a person reads
    resumed_from: int | None  # epochs the last.pt this run continued from had finished, None for a fresh run
    stages: dict[str, dict[str, Any]]
    files: list[Path] = field(default_factory=list)  # pictures and submission written at the end

    def line(self) -> str:
        """One line per run: each stage's epochs and val PSNR, and where its outputs are."""
        parts = [
            f"{name}: {s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}, val PSNR {s['final_val_psnr']:.2f} dB "
            f"(best {s['best_val_psnr']:.2f} at epoch {s['best_epoch']})"
            for name, s in self.stages.items()
        ]
        resumed = f" (resumed after epoch {self.resumed_from})" if self.resumed_from is not None else ""
        return f"seed {self.seed}{resumed}: " + "; ".join(parts) + f"; outputs in {self.out}"


@dataclass
class RetrainReport:
    runs: list[RunReport]
    mean: float  # of the runs' final val PSNR
    std: float  # sample standard deviation over the runs (0 for one run)
    seeds_json: Path | None  # out/seeds.json when there are several seeds


def retrain_config(path: str | Path, sets: list[str], epochs: int | None = None, out: str | None = None) -> TrainConfig:
    """The exported config with `--set` overrides, `--epochs` and the output folder applied.

    The folder is `--out`, else a non-empty `out` from the file or `--set`, else runs/retrain.
    """
    config = load_config(path, sets)
    changes: dict[str, Any] = {"out": out or config.out or DEFAULT_OUT}
    if epochs is not None:
        if epochs < 1:
            raise UsageError(f"--epochs must be >= 1, got {epochs}: it sets the main stage's epochs")
        changes["epochs"] = epochs
    return config.replace(**changes)


def stage_summary(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage (in training order): epochs, first/last epoch, final and best val PSNR, final train loss.

    `history` is the trainer's (0-based `epoch`); the epochs here count from 1, as metrics.json's rows do.
    """
    out: dict[str, dict[str, Any]] = {}
    for stage in dict.fromkeys(m["stage"] for m in history):
        rows = [m for m in history if m["stage"] == stage]
        best = max(rows, key=lambda m: _rank(m["val_psnr"]))
        out[stage] = {
            "epochs": len(rows),
            "first_epoch": rows[0]["epoch"] + 1,
            "last_epoch": rows[-1]["epoch"] + 1,
            "final_val_psnr": rows[-1]["val_psnr"],
            "best_val_psnr": best["val_psnr"],
            "best_epoch": best["epoch"] + 1,
            "final_train_loss": rows[-1]["train_loss"],
        }
    return out


def _rank(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def _resume_state(config: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from (out/last.pt), after checking it is this config's run."""
    last = Path(config.out) / "last.pt"
    if not last.exists():
        if resume:
            log.warning("%s not found: nothing to resume, starting from the first epoch", last)
        return None
    if not resume:
        raise UsageError(
            f"{config.out} already holds a run ({last.name}): pass --resume to continue it, or choose another --out"
        )
    state = load_checkpoint(last)
    free = set(RESUME_FREE_FIELDS)
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in free]
    fix = "resume with the same config, --epochs and --set, or start a new --out"
    check_fields(config_of(state), config, names, str(last), fix)
    check_resumable(state, last)  # a part of the wrong shape fails here, not in the middle of training
    model_from_checkpoint(state)  # its weights fit its config
    _renumber_old_best(Path(config.out))
    return state


def _renumber_old_best(out: Path) -> None:
    """A run written before epochs were counted from 1 in file names (its metrics.json starts at epoch 0): move
    its best-eNNNN.pt up by one, so the resumed run keeps them instead of taking them for other epochs' files."""
    try:
        rows = json.loads((out / "metrics.json").read_text())["epochs"]
        old = bool(rows) and rows[0]["epoch"] == 0
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return  # no readable metrics.json: nothing to tell the numbering by; the run's files stay as they are
    if old:
        numbered = sorted((int(p.stem[6:]), p) for p in out.glob("best-e[0-9]*.pt") if p.stem[6:].isdigit())
        for n, path in reversed(numbered):  # highest first: no rename lands on a file not yet moved
            path.rename(out / best_name(n))
        log.info("%s: renamed %d best-eNNNN.pt to count epochs from 1", out, len(numbered))


def run_one(
    config: TrainConfig, data: DataSet, *, resume: bool = False, hook_factory: HookFactory | None = None
) -> RunReport:
    """Train one run into config.out (continuing out/last.pt when `resume`), then write its outputs.

    Raises: UsageError when out holds a run and `resume` is off, or cannot be written; CheckpointError when
    its last.pt is unreadable or from another config.
    """
    out = ensure_writable_dir(config.out)
    state = _resume_state(config, resume)
    resumed_from = int(state["epoch"]) + 1 if state is not None else None  # a checkpoint holds the 0-based index
    done = resumed_from or 0
    hook = hook_factory(config, done) if hook_factory is not None else None
    on_step: StepHook | None = getattr(hook, "on_step", None)
    result = train(config, data, on_epoch=hook, resume=state, on_step=on_step)
    return _finish(config, data, result.history, out, torch.device(result.device), resumed_from)


def _finish(
    config: TrainConfig,
    data: DataSet,
    history: list[dict[str, Any]],
    out: Path,
    device: torch.device,
    resumed_from: int | None,
) -> RunReport:
    """Pictures, submission and the final metrics.json, all from the best checkpoint's weights."""
    source = out / "best.pt" if (out / "best.pt").exists() else out / "last.pt"  # no best.pt: every PSNR was NaN
    model = model_from_checkpoint(load_checkpoint(source, map_location=device), expect=config).to(device)
    ev = evaluate(model, data.val, config, device, keep_preds=True)
    assert ev.preds is not None  # keep_preds=True
    files = [
        write_psnr_plot(out / "psnr_per_frame.png", ev.psnr_per_frame, f"{source.name}: val PSNR per frame"),
        write_gif(out / "val.gif", [ev.preds[0], data.val.frames[0, 1:]], ["predicted", "true"]),
    ]
    test = None
    if data.test_first is not None:
        pred = write_test_outputs(model, config, data, out, device)
        files += [pred.submission, *pred.gifs]
        test = {"submission": pred.submission.name, "videos": pred.n_videos, "frames_per_video": pred.n_poses}
    stages = stage_summary(history)
    best = max(history, key=lambda m: _rank(m["val_psnr"]))
    report = RunReport(
        out, config.seed, history[-1]["val_psnr"], best["val_psnr"], best["epoch"] + 1, resumed_from, stages, files
    )
    save_json(
        out / "metrics.json",
        {
            "config": config.to_dict(),
            "epochs": metrics_rows(history),
            "stages": stages,
            "final_val_psnr": report.final_val_psnr,
            "best_val_psnr": report.best_val_psnr,
            "best_epoch": report.best_epoch,
            "outputs_from": source.name,
            "outputs_val_psnr": ev.val_psnr,
            "outputs_psnr_per_frame": [round(float(v), 4) for v in ev.psnr_per_frame.mean(axis=0)],
            "test": test,
        },
    )
    return report


def retrain(
    config: TrainConfig, seeds: int = 1, resume: bool = False, hook_factory: HookFactory | None = None
) -> RetrainReport:
    """Retrain `config` once into config.out, or `seeds` times into config.out/seed-N plus a seeds.json.

    Every run folder is checked before the first run trains, so a refusal leaves nothing half-done.
    """
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}: it is the number of runs")
    base = Path(config.out)
    if seeds == 1:
        configs = [config]
    else:
        configs = [
            config.replace(seed=config.seed + i, out=str(base / f"seed-{config.seed + i}")) for i in range(seeds)
        ]
    for c in configs:
        if (Path(c.out) / "last.pt").exists():
            _resume_state(c, resume)  # refuses a run without --resume, or a last.pt of another config
    cache = DataCache()
    cache.get(configs[0])  # a data error stops here, before any folder is made
    ensure_writable_dir(base)
    runs = [run_one(c, cache.get(c), resume=resume, hook_factory=hook_factory) for c in configs]
    values = [r.final_val_psnr for r in runs]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    report = RetrainReport(runs, statistics.fmean(values), std, base / "seeds.json" if seeds > 1 else None)
    if report.seeds_json is not None:
        save_json(
            report.seeds_json,
            {
                "seeds": [r.seed for r in runs],
                "runs": [str(r.out) for r in runs],
                "final_val_psnr": values,
                "best_val_psnr": [r.best_val_psnr for r in runs],
                "mean": report.mean,
                "std": report.std,
            },
        )
    return report
