"""One clip's loss and one video's rollout, batched over time (docs/ARCHITECTURE.md, "Model").

Shapes: B = batch, L = frames per clip, S = L - 1 predicted steps. Tensors are time-major inside
((S, B, C, H, W)) so that flattening the first two dims gives step-major order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from model.metrics import kl_divergence
from model.net import CVAE


@dataclass
class ClipLoss:
    loss: torch.Tensor  # sum over steps of MSE_t + beta * KL_t (scalar, differentiable)
    mse: torch.Tensor  # sum over steps of MSE_t (detached)
    kl: torch.Tensor  # sum over steps of KL_t (detached)


def chunked(fn: Callable[..., Any], chunk: int, *xs: torch.Tensor) -> Any:
    """fn over dim-0 chunks of `xs` (same length), concatenated (per element if fn returns a tuple);
    chunk <= 0 means one call.

    Small chunks keep the CPU's working set in cache (docs/ARCHITECTURE.md, "Model"; bench/RESULTS.md measures it).
    """
    n = xs[0].shape[0]
    if chunk <= 0 or n <= chunk:
        return fn(*xs)
    outs = [fn(*(x[i : i + chunk] for x in xs)) for i in range(0, n, chunk)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))
    return torch.cat(outs)


def pose_features(model: CVAE, poses: torch.Tensor, chunk: int) -> torch.Tensor:
    """(S, B, 3, H, W) -> (S, B, L, H, W).

    In training the pose encoder's BatchNorm must see the same batches as the template (one time step,
    B samples) so its statistics and running averages match; the encoder is cheap, so loop over steps.
    In evaluation BatchNorm uses running statistics and all steps go in one batched call.
    """
    s, b = poses.shape[:2]
    if model.training:
        return torch.stack([model.pose_enc(p) for p in poses])
    return chunked(model.pose_enc, chunk, poses.flatten(0, 1)).unflatten(0, (s, b))


def clip_loss(
    model: CVAE,
    frames: torch.Tensor,
    poses: torch.Tensor,
    beta: float,
    teacher_forcing: bool,
    eps: torch.Tensor | None = None,
    chunk: int = 0,
    clamp_feedback: bool = True,
) -> ClipLoss:
    """Loss of one batch of clips, batched over time.

    Args:
        frames, poses: (B, L, 3, H, W) float in [0, 1].
        beta: KL weight; teacher_forcing: feed true frame t-1 (else the detached previous prediction).
        eps: (S, B, N, H, W) reparameterisation noise; drawn on the frames' device when None.
        chunk: samples per batched call (0 = all at once).
        clamp_feedback: feed back predictions clamped to [0, 1] (detached either way, so gradients are the
            same function of what is fed; only the values fed differ).
    """
    b, length = frames.shape[:2]
    x = frames.transpose(0, 1)  # (L, B, 3, H, W)
    pose_feat = pose_features(model, poses.transpose(0, 1)[1:], chunk)  # (S, B, Lc, H, W)
    s = length - 1
    if eps is None:
        eps = torch.randn((s, b, model.n_dim, *frames.shape[-2:]), device=frames.device)
    if teacher_forcing:
        feat = chunked(model.frame_enc, chunk, x.flatten(0, 1)).unflatten(0, (length, b))  # (L, B, F, H, W)
        true_feat, prev_feat = feat[1:], feat[:-1]
    else:
        true_feat = chunked(model.frame_enc, chunk, x[1:].flatten(0, 1)).unflatten(0, (s, b))  # (S, B, F, H, W)
    z, mu, logvar = chunked(model.posterior, chunk, true_feat.flatten(0, 1), pose_feat.flatten(0, 1), eps.flatten(0, 1))
    kl = kl_divergence(mu, logvar, b)  # summed over steps: each KL_t is a sum / B
    z = z.unflatten(0, (s, b))  # (S, B, N, H, W)
    if teacher_forcing or chunk <= 0:
        if not teacher_forcing:
            prev_feat = _fed_back_features(model, x[0], pose_feat, z, clamp_feedback)
        pred = chunked(model.decode, chunk, prev_feat.flatten(0, 1), pose_feat.flatten(0, 1), z.flatten(0, 1))
        pred = pred.unflatten(0, (s, b))  # (S, B, 3, H, W)
    else:
        # Chunked calls mean big maps (32x64 at default dims on the CPU), where FLOPs, not calls, set the pace: a
        # second forward costs more than batching the backward saves (bench/RESULTS.md). So the decoder path runs
        # step by step with its graph, as the template's does (docs/ARCHITECTURE.md, "Model").
        preds, prev = [], x[0]
        for t in range(s):
            pred_t = model.decode(model.frame_enc(prev), pose_feat[t], z[t])  # (B, 3, H, W)
            preds.append(pred_t)
            prev = _fed_back(pred_t, clamp_feedback)
        pred = torch.stack(preds)
    mse = (pred.float() - x[1:].float()).pow(2).flatten(1).mean(dim=1).sum()  # sum_t mean-over-elements MSE_t
    loss = mse + beta * kl.float()
    return ClipLoss(loss, mse.detach(), kl.detach().float())


def clip_loss_stepwise(
    model: CVAE,
    frames: torch.Tensor,
    poses: torch.Tensor,
    beta: float,
    teacher_forcing: bool,
    eps: torch.Tensor | None = None,
    clamp_feedback: bool = True,
) -> ClipLoss:
    """The lab template's per-frame loop (reference for tests and the benchmark baseline): the previous frame is
    re-encoded every step and every call has batch B."""
    b, length = frames.shape[:2]
    mse = torch.zeros((), device=frames.device)
    kl = torch.zeros((), device=frames.device)
    prev = frames[:, 0]
    for t in range(1, length):
        e = None if eps is None else eps[t - 1]
        pred, mu, logvar = model.step(frames[:, t], frames[:, t - 1] if teacher_forcing else prev, poses[:, t], e)
        mse = mse + (pred.float() - frames[:, t].float()).pow(2).mean()
        kl = kl + kl_divergence(mu, logvar, b).float()
        prev = _fed_back(pred, clamp_feedback)
    return ClipLoss(mse + beta * kl, mse.detach(), kl.detach())


def _fed_back_features(
    model: CVAE, first: torch.Tensor, pose_feat: torch.Tensor, z: torch.Tensor, clamp: bool
) -> torch.Tensor:
    """Frame-encoder features of the frames fed to the decoder without teacher forcing: (S, B, F, H, W), with
    their graph.

    Only the decoder path is sequential: step t needs prediction t-1. Predictions are fed back detached, so no
    gradient crosses a step and the loss's graph needs only each step's input. So the inputs come from a rollout
    without a graph (S-1 decoder steps at batch B), and the graph is built once, batched over time: the same loss
    and gradients as the template's step-by-step form (tests/test_model.py), with one batched backward in place
    of S small ones. Used where the clip goes in one call (small maps on the CPU, any GPU), where the cost per
    call dominates: the small profile's step without teacher forcing went 249 -> 189 ms here (one extra forward
    of the decoder path at batch B, one backward at batch S*B instead of S at batch B).
    """
    s = pose_feat.shape[0]
    with torch.no_grad():
        fed, prev = [first], first
        for t in range(s - 1):
            prev = _fed_back(model.decode(model.frame_enc(prev), pose_feat[t], z[t]), clamp)  # (B, 3, H, W)
            fed.append(prev)
    inputs = torch.stack(fed)  # (S, B, 3, H, W)
    return model.frame_enc(inputs.flatten(0, 1)).unflatten(0, inputs.shape[:2])


def _fed_back(pred: torch.Tensor, clamp: bool) -> torch.Tensor:
    """The previous prediction as the next step's input: detached; clamped to the frames' range [0, 1] unless
    `clamp` is off. Unclamped (the template), one overshooting frame is re-encoded, overshoots more, and within
    a clip can reach inf (measured: 37 -> 1e13 -> NaN over three steps at lr 3.6e-3); evaluation clamps too."""
    pred = pred.detach()
    return pred.clamp(0.0, 1.0) if clamp else pred


@torch.no_grad()
def rollout(
    model: CVAE,
    first: torch.Tensor,
    poses: torch.Tensor,
    generator: torch.Generator | None = None,
    chunk: int = 0,
    block: int = 64,
    on_frame: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Predict a whole video from its first frame and poses, z from the prior N(0, I).

    Args:
        first: (V, 3, H, W) float; poses: (V, L, 3, H, W) float (poses[:, 0] belongs to the first frame).
        generator: seeds the prior draws (on the model's device), so evaluation is a function of the weights.
        block: time steps whose pose features are computed in one batched call (bounds memory on long videos).
        on_frame: called after each time step (for progress only; it sees nothing and changes nothing).
    Returns: (V, L-1, 3, H, W) predictions clamped to [0, 1]; each is fed back clamped.
    """
    v, length = poses.shape[:2]
    h, w = first.shape[-2:]
    preds, prev = [], first
    for start in range(1, length, block):
        stop = min(start + block, length)
        feats = pose_features(model, poses[:, start:stop].transpose(0, 1), chunk)  # (T, V, Lc, H, W)
        for t in range(stop - start):
            z = torch.randn((v, model.n_dim, h, w), generator=generator, device=first.device)
            pred = model.decode(model.frame_enc(prev), feats[t], z.to(first.dtype)).float().clamp(0.0, 1.0)
            preds.append(pred)
            prev = pred.to(first.dtype)
            if on_frame is not None:
                on_frame()
    return torch.stack(preds, dim=1)  # (V, L-1, 3, H, W)
