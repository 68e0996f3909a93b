"""The trainer: one plain epoch loop with one hook, `on_epoch(epoch, metrics)`.

The hook may raise (e.g. optuna's TrialPruned) to stop training; the exception propagates unchanged.
`on_step(step, steps)` only watches: it reports progress within an epoch and cannot change the run.

Epochs: `epoch` in the hook, the metrics dicts and checkpoints is the trainer's 0-based index (what a resumed
run continues after); everything written for people counts from 1, as the console does: the rows of
metrics.json (`metrics_rows`) and the names of best-eNNNN.pt.

See docs/ARCHITECTURE.md, "The trainer seam".
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.checkpoint import WriteError, save_checkpoint, save_json
from model.clip import clip_loss, rollout
from model.config import TrainConfig
from model.dataset import DataSet, Videos
from model.device import autocast, flush_denormals, keep_freed_memory, resolve_device, time_chunk, to_input
from model.errors import DivergedError
from model.metrics import psnr
from model.net import CVAE
from model.schedules import kl_beta, teacher_forcing_ratio

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, Any]], None]
StepHook = Callable[[int, int], None]  # (steps done in this epoch, 1-based; steps in the epoch), after each step


@dataclass
class EvalResult:
    psnr_per_frame: np.ndarray  # (V, L-1) PSNR of each predicted frame of each video, dB
    val_psnr: float  # mean over videos of each video's mean over frames
    preds: torch.Tensor | None = None  # (V, L-1, 3, H, W) float in [0, 1] when asked for


@dataclass
class TrainResult:
    config: TrainConfig
    model: CVAE
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics dict per epoch
    val_psnr: float = float("nan")  # after the last epoch
    best_val_psnr: float = float("nan")
    psnr_per_frame: np.ndarray | None = None  # (V, L-1) of the last evaluation
    device: str = "cpu"
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(
    name: str,
    params: Any,
    lr: float,
    config: TrainConfig,
    *,
    momentum: float | None = None,
    weight_decay: float | None = None,
) -> torch.optim.Optimizer:
    """The optimizer `name`; momentum and weight decay default to the main stage's (config.momentum, .weight_decay)."""
    # fused: one kernel over all parameters instead of ~15 ops per parameter tensor (torch's CPU default is that
    # per-tensor loop), a few percent of the small profile's step
    # (bench/RESULTS.md, "Measurements behind code choices").
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    decay = config.weight_decay if weight_decay is None else weight_decay
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, fused=fused)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, fused=fused)
    mom = config.momentum if momentum is None else momentum
    return torch.optim.SGD(params, lr=lr, momentum=mom, weight_decay=decay, fused=fused)


def stage_optimizer(stage_name: str, name: str, lr: float, config: TrainConfig, params: Any) -> torch.optim.Optimizer:
    """A stage's optimizer: the fine-tune stage has its own momentum and weight decay (default 0 and 0: the
    report's plain SGD), the main stage uses `momentum` and `weight_decay`."""
    if stage_name == "finetune":
        return make_optimizer(
            name, params, lr, config, momentum=config.finetune_momentum, weight_decay=config.finetune_weight_decay
        )
    return make_optimizer(name, params, lr, config)


def stages(config: TrainConfig) -> list[tuple[str, str, float, int]]:
    """(stage name, optimizer, lr, epochs): the main stage, then the optional fine-tune stage (the report's §4.4:
    plain SGD by default, see stage_optimizer)."""
    out = [("main", config.optimizer, config.lr, config.epochs)]
    if config.finetune_epochs:
        out.append(("finetune", config.finetune_optimizer, config.finetune_lr, config.finetune_epochs))
    return out


def epoch_batches(n_clips: int, config: TrainConfig, gen: torch.Generator) -> list[torch.Tensor]:
    """The clip indices of each optimizer step of one epoch: a fresh shuffle of the clips (a `partial` share of
    them), cut into batches of batch_size, the last one short when they do not divide (README.md, "One training
    run and the data": the lab's loader neither shuffles nor keeps the short batch)."""
    order = torch.randperm(n_clips, generator=gen)[: max(1, int(n_clips * config.partial))]
    return list(order.split(config.batch_size))


def steps_per_epoch(n_clips: int, config: TrainConfig) -> int:
    """Optimizer steps in one epoch over n_clips training clips (len of epoch_batches)."""
    return math.ceil(max(1, int(n_clips * config.partial)) / config.batch_size)


def metrics_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-epoch metrics as written for people (metrics.json): epochs counted from 1, as on the console."""
    return [{**m, "epoch": int(m["epoch"]) + 1} for m in history]


def best_name(epoch: int) -> str:
    """File name of the kept checkpoint of 0-based epoch `epoch`: best-eNNNN.pt with NNNN counted from 1."""
    return f"best-e{epoch + 1:04d}.pt"


def total_epochs(config: TrainConfig) -> int:
    """Epochs of a whole run, every stage together (the pruners' resource, the progress bars' length)."""
    return sum(n for *_, n in stages(config))


def evaluate(
    model: CVAE,
    videos: Videos,
    config: TrainConfig,
    device: torch.device | None = None,
    keep_preds: bool = False,
    on_frame: Callable[[], None] | None = None,
) -> EvalResult:
    """Roll out every validation video from its first frame, z from the prior; PSNR per frame and overall.

    The prior draws come from a generator seeded with config.seed, so the result depends only on the weights.
    `on_frame` is called after each time step of the rollout (progress only).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(config.seed)
    frames = to_input(videos.frames, device, config.channels_last)  # (V, L, 3, H, W)
    poses = to_input(videos.poses, device, config.channels_last)
    with flush_denormals(device), autocast(config, device):
        preds = rollout(model, frames[:, 0], poses, gen, time_chunk(config, device), on_frame=on_frame)  # (V, L-1, ...)
    per_frame = psnr(preds.flatten(0, 1), frames[:, 1:].flatten(0, 1)).view(preds.shape[:2])
    model.train(was_training)
    pf = per_frame.cpu().numpy()
    return EvalResult(pf, float(pf.mean(axis=1).mean()), preds.cpu() if keep_preds else None)


def train(
    config: TrainConfig,
    data: DataSet,
    on_epoch: EpochHook | None = None,
    resume: dict[str, Any] | None = None,
    last: str | Path | None = None,
    *,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train the CVAE on `data` as `config` says, evaluating on the validation videos after every epoch.

    Args:
        on_epoch: called after each epoch with (epoch, metrics); may raise to stop.
        on_step: called after each optimizer step with (step, steps in the epoch), for progress only: it sees no
            tensors and draws no random numbers, so a run with it gives the same result as one without.
        resume: a checkpoint dict (from model.checkpoint.load_checkpoint) to continue from its next epoch.
        last: a file that holds, after each epoch and before `on_epoch`, that epoch's resumable state (what
            `config.out`'s last.pt holds, written atomically): a study trial's checkpoint, without `out`'s other
            files (docs/ARCHITECTURE.md, "Trial checkpoints"). Best effort: one that cannot be written is a
            logged warning, and training goes on without it.
    Returns: TrainResult with the final model and per-epoch history.
    Raises: DivergedError when the loss becomes NaN/inf (naming the epoch).
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    if device.type == "cpu":
        keep_freed_memory()
    seed_everything(config.seed)
    model = CVAE.from_config(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if config.compile:
        # nn.Module.compile() compiles forward in place, so state_dict keys (and checkpoints) stay the same.
        for part in (model.frame_enc, model.posterior, model.fusion, model.generator):
            part.compile()
    chunk = time_chunk(config, device)
    # One CPU generator drives shuffling and teacher-forcing draws, one on the device drives eps: both are
    # checkpointed, so a resumed run continues the exact random stream.
    cpu_gen = torch.Generator().manual_seed(config.seed)
    dev_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    result = TrainResult(config=config, model=model, device=str(device))
    out = Path(config.out) if config.out else None

    plan = stages(config)
    start_epoch, history = 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        start_epoch, history = int(resume["epoch"]) + 1, list(resume["metrics"])
        cpu_gen.set_state(resume["rng"]["cpu"])
        dev_gen.set_state(resume["rng"]["device"].cpu() if device.type == "cpu" else resume["rng"]["device"])
    result.history = history
    best = max((m["val_psnr"] for m in history), default=-math.inf)
    if history and start_epoch >= total_epochs(config):  # a finished run's checkpoint: nothing left to train
        ev = evaluate(model, data.val, config, device)
        result.val_psnr, result.psnr_per_frame = ev.val_psnr, ev.psnr_per_frame

    epoch0 = 0
    for stage_name, opt_name, lr, n_epochs in plan:
        stage_end = epoch0 + n_epochs
        if start_epoch >= stage_end:
            epoch0 = stage_end
            continue
        optimizer = stage_optimizer(stage_name, opt_name, lr, config, model.parameters())
        milestones = config.lr_milestones if stage_name == "main" else []
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.lr_gamma)
        if resume is not None and resume.get("stage") == stage_name and start_epoch > epoch0:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        for epoch in range(max(start_epoch, epoch0), stage_end):
            t0 = time.perf_counter()
            with flush_denormals(device):
                stats = _train_epoch(
                    model, data.train, config, epoch, optimizer, scaler, cpu_gen, dev_gen, device, chunk, on_step
                )
            scheduler.step()
            ev = evaluate(model, data.val, config, device)
            metrics = {
                "epoch": epoch,
                "stage": stage_name,
                **stats,
                "val_psnr": ev.val_psnr,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
            history.append(metrics)
            result.val_psnr, result.psnr_per_frame = ev.val_psnr, ev.psnr_per_frame
            if out is not None or last is not None:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "config": config.to_dict(),
                    "epoch": epoch,
                    "stage": stage_name,
                    "metrics": history,
                    "rng": {"cpu": cpu_gen.get_state(), "device": dev_gen.get_state()},
                }
            if out is not None:
                if ev.val_psnr > best:
                    save_checkpoint(out / "best.pt", state)
                # The keep_best best epochs by val PSNR (NaN ranks last, ties go to the earlier epoch).
                ranked = sorted(history, key=lambda m: (-np.nan_to_num(m["val_psnr"], nan=-np.inf), m["epoch"]))
                keep = {best_name(m["epoch"]) for m in ranked[: config.keep_best]}
                if best_name(epoch) in keep:
                    save_checkpoint(out / best_name(epoch), state)
                for old in out.glob("best-e*.pt"):
                    if old.name not in keep:
                        old.unlink(missing_ok=True)
                save_json(out / "metrics.json", {"config": config.to_dict(), "epochs": metrics_rows(history)})
                # last.pt goes last: it is the commit point a resumed run continues from, so a kill before it
                # repeats this epoch and rewrites the files above identically.
                save_checkpoint(out / "last.pt", state)
            if last is not None:  # likewise the commit point of a trial's checkpoint
                try:
                    save_checkpoint(last, state)
                except WriteError as exc:  # the trial goes on without it: a retry would restart, nothing worse
                    log.warning("no checkpoint for this run's retry: %s", exc)
                    last = None
            best = max(best, ev.val_psnr)
            log.info("epoch %d: loss %.4f val PSNR %.2f dB", epoch + 1, stats["train_loss"], ev.val_psnr)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
        epoch0 = stage_end
    result.best_val_psnr = best
    result.seconds = time.perf_counter() - started
    return result


def _train_epoch(
    model: CVAE,
    clips: Videos,
    config: TrainConfig,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cpu_gen: torch.Generator,
    dev_gen: torch.Generator,
    device: torch.device,
    chunk: int,
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """One pass over (a `partial` share of) the training clips; returns the epoch's mean loss terms."""
    model.train()
    ratio, beta = teacher_forcing_ratio(config, epoch), kl_beta(config, epoch)
    batches = epoch_batches(clips.frames.shape[0], config, cpu_gen)
    use_tf = bool(torch.rand((), generator=cpu_gen) < ratio)  # once per epoch (docs/ARCHITECTURE.md, "Schedules")
    sums = {"train_loss": 0.0, "mse": 0.0, "kl": 0.0}
    n_batches, n_tf = 0, 0
    for idx in batches:
        if config.tf_granularity == "batch":
            use_tf = bool(torch.rand((), generator=cpu_gen) < ratio)
        frames = to_input(clips.frames[idx], device, config.channels_last)  # (B, L, 3, H, W)
        poses = to_input(clips.poses[idx], device, config.channels_last)
        b, length = frames.shape[:2]
        eps = torch.randn((length - 1, b, model.n_dim, *frames.shape[-2:]), generator=dev_gen, device=device)
        with autocast(config, device):
            terms = clip_loss(model, frames, poses, beta, use_tf, eps, chunk, config.feedback_clamp)
        loss_value = float(terms.loss.detach())
        if not math.isfinite(loss_value):
            raise DivergedError(epoch + 1, loss_value)  # 1-based, as people count
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms.loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        sums["train_loss"] += loss_value
        sums["mse"] += float(terms.mse)
        sums["kl"] += float(terms.kl)
        n_batches += 1
        n_tf += int(use_tf)
        if on_step is not None:
            on_step(n_batches, len(batches))
    means = {k: v / max(1, n_batches) for k, v in sums.items()}
    return {**means, "beta": beta, "tfr": ratio, "teacher_forcing": n_tf / max(1, n_batches)}
