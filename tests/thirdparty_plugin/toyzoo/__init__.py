"""A toy model zoo unknown to dclszoo (stand-in for a third-party library)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

REGISTRY: list[str] = []
"""Model names registered in the zoo (plugins add theirs here, like timm's registry)."""


class ToyMixer(nn.Module):
    """Depthwise k x k filtering with the weight kept as a raw parameter ``filt [C, 1, k, k]``."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.filt = nn.Parameter(torch.randn(channels, 1, k, k) / k)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.filt, padding=self.k // 2, groups=x.shape[1])


class ToyNet(nn.Module):
    """Two residual mixing blocks and a linear head."""

    def __init__(self, channels: int = 4, k: int = 5, num_classes: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(2, channels)
        self.mixers = nn.ModuleList([ToyMixer(channels, k) for _ in range(2)])
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N, 2, H, W]
        x = self.proj(x.movedim(1, -1)).movedim(-1, 1)
        for mixer in self.mixers:
            x = x + torch.tanh(mixer(x))
        return self.head(x.mean(dim=(2, 3)))
