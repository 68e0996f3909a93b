"""The conditional VAE of the lab template: encoders, Gaussian predictor, decoder, generator.

`CVAE.step` is the template's per-frame forward; the trainer uses the same modules batched over time
(`model/clip.py`), which is the same maths with far fewer kernel launches.

See docs/ARCHITECTURE.md, "Model".
"""

from __future__ import annotations

import torch
from torch import nn

from model.blocks import DepthConvBlock, ResidualBlock
from model.config import TrainConfig


class FrameEncoder(nn.Sequential):
    """RGB frame (N, 3, H, W) -> features (N, F, H, W)."""

    def __init__(self, f: int) -> None:
        super().__init__(
            ResidualBlock(3, f // 8),
            DepthConvBlock(f // 8),
            ResidualBlock(f // 8, f // 4),
            DepthConvBlock(f // 4),
            ResidualBlock(f // 4, f // 2),
            DepthConvBlock(f // 2),
            nn.Conv2d(f // 2, f, 3, padding=1),
        )


class PoseEncoder(nn.Sequential):
    """Pose image (N, 3, H, W) -> features (N, L, H, W)."""

    def __init__(self, l_dim: int) -> None:
        super().__init__(
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, l_dim // 2, 7),
            nn.BatchNorm2d(l_dim // 2),
            # The template writes LeakyReLU(True): negative_slope=1.0, i.e. an identity. Kept on purpose so
            # our PSNRs compare with the lab's.
            nn.LeakyReLU(True),
            ResidualBlock(l_dim // 2, l_dim),
        )


class GaussianPredictor(nn.Module):
    """Posterior q(z | frame t, pose t): concat features -> (z, mu, logvar), each (N, N_dim, H, W)."""

    def __init__(self, in_ch: int, n_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            ResidualBlock(in_ch, n_dim // 4),
            DepthConvBlock(n_dim // 4),
            ResidualBlock(n_dim // 4, n_dim // 2),
            DepthConvBlock(n_dim // 2),
            ResidualBlock(n_dim // 2, n_dim),
            nn.LeakyReLU(True),  # slope 1.0 (identity), as in the template; see PoseEncoder
            nn.Conv2d(n_dim, 2 * n_dim, 1),
        )

    def forward(
        self, frame_feat: torch.Tensor, pose_feat: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(torch.cat([frame_feat, pose_feat], dim=1)).chunk(2, dim=1)
        return reparameterize(mu, logvar, eps), mu, logvar


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn on mu's own device (Kingma & Welling 2014)."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps.to(mu.dtype)


class DecoderFusion(nn.Sequential):
    """concat(prev-frame feat, pose feat, z) (N, F+L+N, H, W) -> (N, D, H, W)."""

    def __init__(self, in_ch: int, d_out: int) -> None:
        c = in_ch
        super().__init__(
            DepthConvBlock(c),
            ResidualBlock(c, c // 4),
            DepthConvBlock(c // 4, c // 2),
            ResidualBlock(c // 2, c // 2),
            DepthConvBlock(c // 2, d_out // 2),
            nn.Conv2d(d_out // 2, d_out, 1),
        )


class Generator(nn.Sequential):
    """Fused features (N, D, H, W) -> frame (N, 3, H, W), linear output (clamp where scored)."""

    def __init__(self, d: int) -> None:
        super().__init__(
            DepthConvBlock(d),
            ResidualBlock(d, d // 2),
            DepthConvBlock(d // 2),
            ResidualBlock(d // 2, d // 4),
            DepthConvBlock(d // 4),
            ResidualBlock(d // 4, d // 8),
            DepthConvBlock(d // 8),
            nn.Conv2d(d // 8, 3, 1),
        )


class CVAE(nn.Module):
    """Pose-conditioned next-frame predictor (the lab's VAE_Model without its training code)."""

    def __init__(self, f_dim: int = 128, l_dim: int = 32, n_dim: int = 12, d_out_dim: int = 192) -> None:
        super().__init__()
        self.frame_enc = FrameEncoder(f_dim)
        self.pose_enc = PoseEncoder(l_dim)
        self.posterior = GaussianPredictor(f_dim + l_dim, n_dim)
        self.fusion = DecoderFusion(f_dim + l_dim + n_dim, d_out_dim)
        self.generator = Generator(d_out_dim)
        self.n_dim = n_dim

    @classmethod
    def from_config(cls, config: TrainConfig) -> CVAE:
        return cls(config.f_dim, config.l_dim, config.n_dim, config.d_out_dim)

    def decode(self, prev_feat: torch.Tensor, pose_feat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Previous-frame features, pose features and z -> predicted frame (N, 3, H, W), unclamped."""
        return self.generator(self.fusion(torch.cat([prev_feat, pose_feat, z], dim=1)))

    def step(
        self, frame: torch.Tensor, prev: torch.Tensor, pose: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The template's per-frame training forward: (pred, mu, logvar) for frame t from frame t-1 and pose t."""
        pose_feat = self.pose_enc(pose)  # (B, L, H, W)
        z, mu, logvar = self.posterior(self.frame_enc(frame), pose_feat, eps)  # (B, N, H, W)
        return self.decode(self.frame_enc(prev), pose_feat, z), mu, logvar


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
