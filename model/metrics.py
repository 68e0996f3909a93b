"""Loss terms and PSNR (docs/ARCHITECTURE.md, "Model"). Pure tensor functions."""

from __future__ import annotations

import torch


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, batch_size: int) -> torch.Tensor:
    """KL(q(z|x,c) || N(0, I)) summed over elements, divided by the batch size (Kingma & Welling 2014, App. B)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch_size


def psnr(pred: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR per sample: 10 log10(range^2 / MSE) with the MSE over all but the first dim (never batch-averaged first).

    pred, truth: (N, ...) -> (N,). A perfect prediction is capped at 100 dB instead of inf.
    """
    mse = (pred.float() - truth.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-10))


def copy_last_psnr(frames: torch.Tensor) -> float:
    """Baseline: predict frame t as frame t-1. frames (V, L, 3, H, W) uint8 or float -> mean PSNR over videos."""
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    per_frame = psnr(x[:, 1:].flatten(0, 1), x[:, :-1].flatten(0, 1)).view(x.shape[0], -1)  # (V, L-1)
    return float(per_frame.mean(dim=1).mean())
