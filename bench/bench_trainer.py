"""Trainer benchmark (issue 2): our batched trainer step against the lab template's per-frame loop.

Everything is measured side by side in one process, on the same clips and the same noise:

- seconds per training step (batch 2, 16 frames, 32x64, default dims), teacher forcing on and off, for
  the template's loop (`clip_loss_stepwise`: per-frame forward, previous frame re-encoded every step, fp32,
  NCHW) and for the trainer's path (`clip_loss` with the device's time chunk, channels_last, autocast when
  amp is set), each followed by the same backward, gradient clip and Adam step. Repetitions are
  interleaved (template, ours, template, ours, ...) so machine noise hits both; the table gives medians;
- FLOPs per step (torch.utils.flop_counter) and achieved GFLOP/s next to large-matmul ceilings (fp32, bf16)
  measured in the same run;
- a 630-frame validation rollout: `model.train.evaluate` against a template-style loop that re-runs the
  pose encoder every frame;
- data loading per epoch (indexing the uint8 tensors + `to_input`) as a share of the epoch's step time,
  and `load_data` from a cold and a warm decode cache;
- val PSNR after the same short training with amp none vs bf16 (small dims, synthetic data);
- peak RSS (and peak GPU memory on CUDA).

    python bench/bench_trainer.py                 # full run (~10-15 min on a 2-core CPU); writes bench/RESULTS.md
    python bench/bench_trainer.py --quick         # smoke check (short videos, few reps); writes nothing
    python bench/bench_trainer.py --device cuda   # the GPU section (bf16 + channels_last + whole-clip batching)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, loadavg, machine, publish, run_facts, section_header, verdict
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.clip import ClipLoss, clip_loss, clip_loss_stepwise
from model.config import TrainConfig
from model.data import load_data
from model.dataset import Videos
from model.device import autocast, flush_denormals, keep_freed_memory, time_chunk, to_input
from model.metrics import copy_last_psnr, psnr
from model.net import CVAE
from model.synth import make_synthetic
from model.train import evaluate, make_optimizer, seed_everything, train

SECTION = "## Trainer (issue 2)"
BETA = 1.0  # KL weight during timing: its value does not change the work done
FTZ_TEMPLATE = "template + flush denormals (TF on), reference"  # a CPU-only row: what the flag alone is worth
# Targets of issue 2: (ours / template) speed-ups, the bf16 PSNR tolerance and the data-loading share.
TARGET_TF, TARGET_NO_TF, TARGET_BF16, TARGET_GPU = 1.3, 1.1, 2.0, 5.0
PSNR_TOL_DB, DATA_SHARE_MAX = 0.3, 0.05
# The bf16-vs-fp32 PSNR check trains this small config (synthetic data) so that the CPU's slow bf16 fits.
PSNR_CONFIG: dict[str, Any] = dict(
    epochs=6,
    batch_size=4,
    train_vi_len=8,
    val_vi_len=32,
    frame_h=16,
    frame_w=32,
    f_dim=32,
    l_dim=8,
    n_dim=4,
    d_out_dim=32,
    synth_train_frames=256,
    tfr=1.0,
    tfr_sde=10,
    kl_anneal_type="None",
    lr=5e-4,
    seed=1,
)


def roomy_primitive_cache() -> None:
    """Let oneDNN keep every variant's conv primitives (call before the first conv of the process).

    Its cache holds 1024 primitives by default; the variants of this bench together (two layouts, batch 2 and
    the time chunks, TF on and off, forward and both backward passes) need more, so each round re-created
    ~500 of ours (counted with ONEDNN_VERBOSE=2: 530 misses a round, 0 with 4096), which a trainer process,
    with one variant, never does. oneDNN reads the variable at its first primitive, not at import.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, fn()) with the device synchronised on both sides."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --- ceilings -----------------------------------------------------------------------------------------


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int, reps: int = 3) -> float:
    """Best-of-`reps` GFLOP/s of an (n, n) @ (n, n) matmul."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    timed(lambda: a @ b, device)  # warm-up
    best = min(timed(lambda: a @ b, device)[0] for _ in range(reps))
    return 2 * n**3 / best / 1e9


def ceilings(device: torch.device) -> dict[str, Any]:
    """Large-matmul GFLOP/s in fp32 and bf16. bf16 is probed small first: CPUs without native bf16
    (no AVX512-BF16/AMX) run it through a reference path hundreds of times slower, where a 2048 matmul
    would take a minute."""
    n = 8192 if device.type == "cuda" else 2048
    fp32 = matmul_gflops(torch.float32, device, n)
    probe = matmul_gflops(torch.bfloat16, device, 512, reps=1)
    bf16_n, bf16 = (n, matmul_gflops(torch.bfloat16, device, n)) if probe > fp32 / 4 else (512, probe)
    return {"n": n, "fp32": fp32, "bf16": bf16, "bf16_n": bf16_n, "bf16_fast": bf16 >= fp32}


# --- training steps -----------------------------------------------------------------------------------


@dataclass
class Variant:
    """One way of doing a training step: the template loop or the trainer path, with its own model copy."""

    name: str
    template: bool
    teacher_forcing: bool
    config: TrainConfig
    device: torch.device
    ftz: bool = False  # flush denormals to zero during the step, as `train` does on the CPU
    model: CVAE = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    chunk: int = field(init=False)
    flops: int = 0
    saved_mib: float = 0.0  # tensors autograd keeps for backward during one step
    times: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)  # minor page faults of the process during each timed step

    def __post_init__(self) -> None:
        seed_everything(self.config.seed)  # every variant starts from the same weights
        self.model = CVAE.from_config(self.config).to(self.device)
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = make_optimizer(self.config.optimizer, self.model.parameters(), self.config.lr, self.config)
        self.chunk = time_chunk(self.config, self.device)

    def step(self, frames_u8: torch.Tensor, poses_u8: torch.Tensor, eps: torch.Tensor) -> float:
        """One optimizer step as `model.train._train_epoch` does it (fp32 unscaled: amp none or bf16)."""
        frames = to_input(frames_u8, self.device, self.config.channels_last)  # (B, L, 3, H, W)
        poses = to_input(poses_u8, self.device, self.config.channels_last)
        with flush_denormals(self.device) if self.ftz else contextlib.nullcontext():
            return self._step(frames, poses, eps)

    def _step(self, frames: torch.Tensor, poses: torch.Tensor, eps: torch.Tensor) -> float:
        terms: ClipLoss
        with autocast(self.config, self.device):
            if self.template:
                terms = clip_loss_stepwise(
                    self.model, frames, poses, BETA, self.teacher_forcing, eps, clamp_feedback=False
                )
            else:
                terms = clip_loss(
                    self.model, frames, poses, BETA, self.teacher_forcing, eps, self.chunk, self.config.feedback_clamp
                )
        loss = float(terms.loss.detach())  # the trainer reads the loss every step (NaN check)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return loss


def make_variants(device: torch.device, bf16: bool) -> list[Variant]:
    """Template/ours pairs for teacher forcing on and off; on a GPU ours is bf16 + channels_last + whole
    clip, on the CPU ours is the fp32 default (plus a bf16 pair when the CPU does bf16 natively or asked)."""
    base = TrainConfig(device=device.type, amp="none", channels_last=False)
    ours = TrainConfig(device=device.type, amp="bf16" if device.type == "cuda" else "none", channels_last=True)
    out = []
    for tf in (True, False):
        tag = "TF on" if tf else "TF off"
        out.append(Variant(f"template ({tag})", True, tf, base, device))
        out.append(Variant(f"ours {ours.amp if ours.amp != 'none' else 'fp32'} ({tag})", False, tf, ours, device, True))
        if device.type == "cpu" and bf16:
            out.append(Variant(f"ours bf16 ({tag})", False, tf, ours.replace(amp="bf16"), device, True))
    if device.type == "cpu":
        # Reference only: the template loop with denormals flushed too, to show what that flag alone is worth.
        out.append(Variant(FTZ_TEMPLATE, True, True, base, device, True))
    return out


def run_steps(variants: list[Variant], clips: Videos, reps: int, device: torch.device) -> None:
    """One FLOP-counted warm-up step per variant, then `reps` interleaved timed rounds on the same clips."""
    batch = variants[0].config.batch_size
    n_clips = clips.frames.shape[0]
    gen = torch.Generator(device=device).manual_seed(0)

    def inputs(r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.arange(r * batch, (r + 1) * batch) % n_clips
        f = clips.frames[idx]
        eps = torch.randn((f.shape[1] - 1, batch, variants[0].model.n_dim, *f.shape[-2:]), generator=gen, device=device)
        return f, clips.poses[idx], eps

    f, p, e = inputs(0)
    for v in variants:
        saved = SavedBytes()
        with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(saved.pack, _same):
            timed(functools.partial(v.step, f, p, e), device)
        v.flops, v.saved_mib = counter.get_total_flops(), saved.total / 2**20
        print(f"  warm-up {v.name}: {v.flops / 1e9:.0f} GFLOP/step, {v.saved_mib:.0f} MiB saved", flush=True)
    for r in range(reps):
        f, p, e = inputs(r + 1)
        for v in variants:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            v.times.append(timed(functools.partial(v.step, f, p, e), device)[0])
            v.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(f"  round {r + 1}/{reps}: " + ", ".join(f"{v.times[-1]:.2f}" for v in variants), flush=True)


class SavedBytes:
    """Pack hook summing the storage bytes autograd saves for backward (each storage counted once)."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[int] = set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._seen:  # saved tensors stay alive until backward: no address reuse
            self._seen.add(storage.data_ptr())
            self.total += storage.nbytes()
        return t


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def speedup(template: Variant, ours: Variant) -> tuple[float, float]:
    """(ratio of medians, median of the per-round ratios) of template time over ours."""
    ratio = statistics.median(template.times) / statistics.median(ours.times)
    paired = statistics.median(t / o for t, o in zip(template.times, ours.times, strict=True))
    return ratio, paired


# --- rollout ------------------------------------------------------------------------------------------


@torch.no_grad()
def template_rollout(model: CVAE, videos: Videos, seed: int, device: torch.device) -> float:
    """The template's validation loop: per frame, pose encoder + frame encoder + decoder, fp32 NCHW."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    frames, poses = to_input(videos.frames, device, False), to_input(videos.poses, device, False)
    v, length, _, h, w = frames.shape
    prev, scores = frames[:, 0], []
    for t in range(1, length):
        z = torch.randn((v, model.n_dim, h, w), generator=gen, device=device)
        prev = model.decode(model.frame_enc(prev), model.pose_enc(poses[:, t]), z).float().clamp(0.0, 1.0)
        scores.append(psnr(prev, frames[:, t]))  # (V,)
    return float(torch.stack(scores, dim=1).mean(dim=1).mean())


def run_rollouts(config: TrainConfig, val: Videos, device: torch.device) -> dict[str, float]:
    seed_everything(config.seed)
    model = CVAE.from_config(config).to(device)
    ours = copy.deepcopy(model)
    if config.channels_last:
        ours = ours.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    t_ours, ev = timed(lambda: evaluate(ours, val, config, device), device)
    t_tmpl, p_tmpl = timed(lambda: template_rollout(model, val, config.seed, device), device)
    return {
        "frames": val.frames.shape[1],
        "ours": t_ours,
        "template": t_tmpl,
        "psnr_ours": ev.val_psnr,
        "psnr_template": p_tmpl,
    }


# --- data loading ---------------------------------------------------------------------------------------


def epoch_loading_seconds(clips: Videos, config: TrainConfig, device: torch.device) -> tuple[float, int]:
    """(seconds, steps) of one epoch's data work as `_train_epoch` does it: shuffle, index, to_input."""
    gen = torch.Generator().manual_seed(config.seed)

    def epoch() -> int:
        order = torch.randperm(clips.frames.shape[0], generator=gen)
        steps = 0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            to_input(clips.frames[idx], device, config.channels_last)
            to_input(clips.poses[idx], device, config.channels_last)
            steps += 1
        return steps

    runs = [timed(epoch, device) for _ in range(5)]
    return statistics.median(t for t, _ in runs), runs[0][1]


def cache_load_seconds(quick: bool) -> dict[str, float]:
    """load_data on a synthetic set written in the lab layout: cold (decode + build cache), then warm."""
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        n_val = 64 if quick else 630
        root = make_synthetic(
            Path(tmp) / "set",
            seed=1,
            train_frames=640,
            val_len=n_val,
            test_videos=1,
            test_len=n_val,
            height=32,
            width=64,
        )
        config = TrainConfig(data=str(root), val_vi_len=n_val)
        cold = time.perf_counter()
        load_data(config)
        warm = time.perf_counter()
        load_data(config)
        return {"cold": warm - cold, "warm": time.perf_counter() - warm}


# --- bf16 vs fp32 after the same training ---------------------------------------------------------------


def psnr_check(device: torch.device, quick: bool) -> dict[str, Any]:
    """Train the same small config with amp none and bf16; also score the fp32 weights under bf16."""
    config = TrainConfig(**{**PSNR_CONFIG, "epochs": 2 if quick else PSNR_CONFIG["epochs"]}, device=device.type)
    data = load_data(config)  # config.data == "": the synthetic set
    out: dict[str, Any] = {
        "copy_last": copy_last_psnr(data.val.frames),
        "config": {**PSNR_CONFIG, "epochs": config.epochs},
    }
    t, fp32 = timed(lambda: train(config, data), device)
    out |= {"fp32": fp32.val_psnr, "fp32_s": t}
    t, bf16 = timed(lambda: train(config.replace(amp="bf16"), data), device)
    out |= {"bf16": bf16.val_psnr, "bf16_s": t}
    out["fp32_weights_bf16_eval"] = evaluate(fp32.model, data.val, config.replace(amp="bf16"), device).val_psnr
    return out


# --- report -----------------------------------------------------------------------------------------------


def trainer_machine(device: torch.device) -> str:
    text = machine(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()})",
        f"Python {platform.python_version()}",
    )
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def report(r: dict[str, Any]) -> str:
    """The markdown section (table, targets, notes) from the collected results."""
    note = "2 cores shared with other engineers' jobs: expect noise; rounds are interleaved so it hits both sides"
    lines = section_header(SECTION, r, note)
    for dev in r["devices"]:
        d = r[dev]
        c = d["ceil"]
        lines += [
            f"### {dev.upper()}: training step (batch 2, 16 frames, 32x64, default dims)",
            "",
            f"Ceilings ({c['n']}x{c['n']} matmul fp32, {c['bf16_n']}x{c['bf16_n']} bf16): "
            f"**{c['fp32']:.0f} GFLOP/s fp32**, **{c['bf16']:.1f} GFLOP/s bf16**"
            + ("" if c["bf16_fast"] else " (no native bf16 on this CPU: bf16 runs a slow reference path)"),
            "",
            f"{d['reps']} timed rounds per row after one FLOP-counted warm-up step. "
            + (
                "glibc's malloc keeps freed memory for reuse (`model.device.keep_freed_memory`, as `train` sets it "
                "on the CPU; process-wide, so for every row)."
                if d["malloc_kept"]
                else "glibc's default malloc (`--glibc-malloc`, or not glibc): freed memory may go back to the kernel."
            ),
            "",
            "| variant | s/step (median) | min | max | GFLOP/step | GFLOP/s | % of ceiling | saved for backward "
            "| page faults/step | speed-up vs template |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v in d["variants"]:
            med = statistics.median(v["times"])
            gfs = v["flops"] / 1e9 / med
            ceil = c["bf16"] if "bf16" in v["name"] else c["fp32"]
            sp = "" if v["template"] else f"{v['speedup'][0]:.2f}x (paired {v['speedup'][1]:.2f}x)"
            lines.append(
                f"| {v['name']} | {med:.2f} | {min(v['times']):.2f} | {max(v['times']):.2f} | "
                f"{v['flops'] / 1e9:.0f} | {gfs:.0f} | {100 * gfs / ceil:.0f}% | {v['saved_mib']:.0f} MiB | "
                f"{statistics.median(v['faults']):.0f} | {sp} |"
            )
        if "skipped_bf16" in d:
            lines += ["", d["skipped_bf16"]]
        ro = d["rollout"]
        lines += [
            "",
            f"Rollout of one {ro['frames']}-frame validation video (default dims, untrained weights): "
            f"`evaluate` **{ro['ours']:.1f} s** (pose encodings batched, no posterior), template-style loop "
            f"(pose encoder per frame, fp32 NCHW) {ro['template']:.1f} s: {ro['template'] / ro['ours']:.2f}x. "
            f"Same prior draws, so the PSNRs agree: {ro['psnr_ours']:.3f} / {ro['psnr_template']:.3f} dB.",
        ]
        dl = d["data"]
        lines += [
            "",
            f"Data loading (synthetic set, {dl['clips']} clips, {dl['steps']} steps/epoch): shuffle + "
            f"index + `to_input` {1000 * dl['epoch_s']:.1f} ms per epoch = {1000 * dl['epoch_s'] / dl['steps']:.2f}"
            f" ms/step = **{100 * dl['share']:.3f}%** of the step time (ours, TF on). `load_data` of the "
            f"same-size set from PNGs: {dl['cold']:.1f} s cold (decode + cache build), {dl['warm']:.2f} s "
            f"from the cache, once per run ({100 * dl['warm'] / dl['epoch_train_s']:.2f}% of one epoch).",
        ]
        lines += ["", f"Peak RSS: {d['rss_steps']:.0f} MiB after the step timings, {r['rss']:.0f} MiB at the end."]
        if dev == "cuda":
            lines[-1] += f" Peak GPU memory: {d['gpu_mem']:.0f} MiB."
    if "cuda" not in r["devices"]:
        lines += [
            "",
            "### GPU",
            "",
            "Not run (no GPU in this session). `--device cuda` runs the same table with ours = "
            "bf16 autocast + channels_last + whole-clip batching (time_chunk 0) against the same fp32 template "
            f"loop; target {TARGET_GPU:.0f}x with teacher forcing.",
        ]
    p = r["psnr"]
    lines += [
        "",
        f"### bf16 vs fp32 after the same training ({r['psnr_device']})",
        "",
        f"Small config (synthetic data, {', '.join(f'{k}={v}' for k, v in p['config'].items())}): val PSNR fp32 "
        f"**{p['fp32']:.2f} dB** ({p['fp32_s']:.0f} s), bf16 **{p['bf16']:.2f} dB** ({p['bf16_s']:.0f} s); "
        f"difference {p['bf16'] - p['fp32']:+.2f} dB. The fp32-trained weights evaluated under bf16 autocast: "
        f"{p['fp32_weights_bf16_eval']:.2f} dB ({p['fp32_weights_bf16_eval'] - p['fp32']:+.3f} dB: the "
        f"rollout's own bf16 error). Copy-last-frame baseline {p['copy_last']:.2f} dB.",
    ]
    lines += ["", "### Targets", ""] + r["targets"] + ["", "### Notes", ""] + r["notes"]
    return "\n".join(lines) + "\n"


def targets_and_notes(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    targets, notes = [], []
    for dev in r["devices"]:
        d = r[dev]
        by_name = {v["name"]: v for v in d["variants"]}
        for v in d["variants"]:
            if v["template"]:
                continue
            tf = v["teacher_forcing"]
            bf16 = "bf16" in v["name"]
            goal = TARGET_GPU if dev == "cuda" else TARGET_BF16 if bf16 else TARGET_TF if tf else TARGET_NO_TF
            if dev == "cuda" and not tf:
                continue  # the GPU target is stated for teacher forcing only; the row is still in the table
            ratio = v["speedup"][0]
            targets.append(
                f"- {dev.upper()} {v['name']}: {ratio:.2f}x vs template, target >= {goal:.1f}x: "
                f"{verdict(ratio >= goal)} ({100 * (ratio / goal - 1):+.0f}%)"
            )
            tmpl = by_name[f"template (TF {'on' if tf else 'off'})"]
            ideal = tmpl["flops"] / v["flops"]
            eff_t = tmpl["flops"] / statistics.median(tmpl["times"]) / 1e9
            eff_o = v["flops"] / statistics.median(v["times"]) / 1e9
            need = goal / ideal * eff_t
            ceil = d["ceil"]["bf16"] if bf16 else d["ceil"]["fp32"]
            notes.append(
                f"- {dev.upper()} {v['name']}: {ideal:.2f}x fewer FLOPs than the template "
                f"({tmpl['flops'] / 1e9:.0f} vs {v['flops'] / 1e9:.0f} GFLOP) at {eff_o / eff_t:.2f}x its throughput "
                f"({eff_o:.0f} vs {eff_t:.0f} GFLOP/s); the speed-up is the product of the two. The {goal:.1f}x "
                f"target needs {need:.0f} GFLOP/s here, {100 * need / ceil:.0f}% of the large-matmul ceiling."
            )
        if FTZ_TEMPLATE in by_name:
            ftz, plain, ours = by_name[FTZ_TEMPLATE], by_name["template (TF on)"], by_name["ours fp32 (TF on)"]
            t_ftz, t_plain = statistics.median(ftz["times"]), statistics.median(plain["times"])
            notes.append(
                f"- {dev.upper()} denormals: ours flushes them to zero on the CPU (`model.device.flush_denormals`, "
                f"as `train` and `evaluate` do); the lab's loop does not. The template with the flag set too takes "
                f"{t_ftz:.2f} s a step ({t_plain / t_ftz:.2f}x its own time without it); ours fp32 (TF on) is "
                f"{t_ftz / statistics.median(ours['times']):.2f}x that reference."
            )
        if dev == "cpu" and not d["ceil"]["bf16_fast"] and not any("bf16" in v["name"] for v in d["variants"]):
            targets.append(
                f"- CPU bf16 >= {TARGET_BF16:.0f}x: **not applicable on this CPU** (no native bf16: "
                f"{d['ceil']['bf16']:.1f} GFLOP/s bf16 vs {d['ceil']['fp32']:.0f} fp32), rows skipped"
            )
        share = d["data"]["share"]
        targets.append(
            f"- {dev.upper()} data loading share {100 * share:.3f}% < {100 * DATA_SHARE_MAX:.0f}%: "
            f"{verdict(share <= DATA_SHARE_MAX)}"
        )
    if "cuda" not in r["devices"]:
        targets.append(f"- GPU >= {TARGET_GPU:.0f}x with teacher forcing: not run (no GPU in this session)")
    p = r["psnr"]
    diff = abs(p["bf16"] - p["fp32"])
    targets.append(
        f"- bf16 val PSNR within {PSNR_TOL_DB} dB of fp32: |{p['bf16']:.2f} - {p['fp32']:.2f}| = "
        f"{diff:.2f} dB: {verdict(diff <= PSNR_TOL_DB)}"
    )
    return targets, notes


# --- main -------------------------------------------------------------------------------------------------


def bench_device(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    print(f"[{device.type}] ceilings", flush=True)
    out: dict[str, Any] = {"ceil": ceilings(device), "malloc_kept": args.malloc_kept}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bf16 = device.type == "cpu" and (out["ceil"]["bf16_fast"] or args.force_bf16)
    if device.type == "cpu" and not bf16:
        out["skipped_bf16"] = (
            f"bf16 rows skipped: this CPU has no native bf16 ({out['ceil']['bf16']:.1f} GFLOP/s "
            "in a bf16 matmul); `--force-bf16` times them anyway."
        )
    config = TrainConfig(device=device.type, val_vi_len=64 if args.quick else 630)
    t_load, data = timed(lambda: load_data(config), device)
    print(f"[{device.type}] synthetic set in {t_load:.1f} s; training steps", flush=True)
    variants = make_variants(device, bf16)
    reps = args.steps if device.type == "cpu" else 3 * args.steps
    run_steps(variants, data.train, reps, device)
    rows = []
    for i, v in enumerate(variants):
        row = {
            "name": v.name,
            "template": v.template,
            "teacher_forcing": v.teacher_forcing,
            "saved_mib": v.saved_mib,
            "times": v.times,
            "faults": v.faults,
            "flops": v.flops,
        }
        if not v.template:
            tmpl = next(t for t in variants[:i] if t.template and t.teacher_forcing == v.teacher_forcing)
            row["speedup"] = speedup(tmpl, v)
        rows.append(row)
    out |= {"variants": rows, "reps": reps, "rss_steps": peak_rss_mib()}
    ours_tf = next(v for v in variants if not v.template and v.teacher_forcing)
    step_s = statistics.median(ours_tf.times)
    del variants, ours_tf
    print(f"[{device.type}] rollout of {config.val_vi_len} frames", flush=True)
    rollout_config = config.replace(amp="bf16") if device.type == "cuda" else config
    out["rollout"] = run_rollouts(rollout_config, data.val, device)
    print(f"[{device.type}] data loading", flush=True)
    epoch_s, steps = epoch_loading_seconds(data.train, config, device)
    out["data"] = {
        "clips": data.train.frames.shape[0],
        "epoch_s": epoch_s,
        "steps": steps,
        "share": epoch_s / (steps * step_s),
        "epoch_train_s": steps * step_s,
        **cache_load_seconds(args.quick),
    }
    if device.type == "cuda":
        out["gpu_mem"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke check: 2 rounds, 64-frame rollout, 2-epoch PSNR check")
    p.add_argument("--steps", type=int, default=None, help="timed rounds per variant (default 7; 2 with --quick)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto = the CPU, plus the GPU when there is one",
    )
    p.add_argument("--force-bf16", action="store_true", help="time CPU bf16 rows even without native bf16")
    p.add_argument(
        "--glibc-malloc",
        action="store_true",
        help="leave glibc's malloc at its defaults for the step timings (train() sets keep_freed_memory on the CPU)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"markdown file to update (default {RESULTS.name} beside this script; --quick writes none)",
    )
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.quick else 7
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here; use --device cpu")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    roomy_primitive_cache()
    args.malloc_kept = False if args.glibc_malloc else keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"], "cuda": ["cuda"]}
    r: dict[str, Any] = {**run_facts(argv), "devices": devices[args.device]}
    for dev in r["devices"]:
        r[dev] = bench_device(torch.device(dev), args)
    r["psnr_device"] = "cuda" if "cuda" in r["devices"] else "cpu"
    print(f"[{r['psnr_device']}] bf16 vs fp32 training", flush=True)
    r["psnr"] = psnr_check(torch.device(r["psnr_device"]), args.quick)
    r |= {
        "rss": peak_rss_mib(),
        "wall_s": time.perf_counter() - started,
        "load_after": loadavg(),
    }
    r["machine"] = trainer_machine(torch.device(r["devices"][-1]))
    r["targets"], r["notes"] = targets_and_notes(r)
    publish(report(r), args.results or (None if args.quick else RESULTS), SECTION)
    return 0 if math.isfinite(r["psnr"]["fp32"]) else 1


if __name__ == "__main__":
    sys.exit(main())
