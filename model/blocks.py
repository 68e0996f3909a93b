"""Convolutional building blocks of the lab template (docs/ARCHITECTURE.md, "Model"). All keep full resolution."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResidualBlock(nn.Module):
    """conv3x3 -> LeakyReLU -> conv3x3 -> LeakyReLU, plus identity (1x1 conv when in != out)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.act = nn.LeakyReLU(0.01)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.conv2(self.act(self.conv1(x))))
        return out + self.skip(x)


class DepthConv(nn.Module):
    """Depth-wise separable unit: 1x1, LeakyReLU(0.01), depth-wise 3x3, 1x1, plus identity/1x1 adaptor."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_ch, in_ch, 1), nn.LeakyReLU(0.01))
        self.depth_conv = nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 1)
        self.adaptor = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.depth_conv(self.conv1(x))) + self.adaptor(x)


class ConvFFN(nn.Module):
    """Gated feed-forward unit: 1x1 to 4*ch, halves a, b -> a * LeakyReLU(0.1)(b), 1x1 back, plus identity."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, 4 * ch, 1)
        self.conv_out = nn.Conv2d(2 * ch, ch, 1)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The two halves of `conv` as two convs over its weight halves: the same maths and parameters as
        # `self.conv(x).chunk(2, dim=1)`, but each half is a dense tensor. Chunking one output splits the
        # channel dim, and in channels_last its backward is a channel-interleaving cat, a visible share of a
        # batched training step on the CPU (bench/RESULTS.md, "Measurements behind code choices").
        w_a, w_b = self.conv.weight.chunk(2, dim=0)
        b_a, b_b = (None, None) if self.conv.bias is None else self.conv.bias.chunk(2)
        a, b = F.conv2d(x, w_a, b_a), F.conv2d(x, w_b, b_b)
        return x + self.conv_out(a * self.act(b))


class DepthConvBlock(nn.Sequential):
    """DepthConv followed by ConvFFN (the template's `DepthConvBlock`)."""

    def __init__(self, in_ch: int, out_ch: int | None = None) -> None:
        out_ch = in_ch if out_ch is None else out_ch
        super().__init__(DepthConv(in_ch, out_ch), ConvFFN(out_ch))
