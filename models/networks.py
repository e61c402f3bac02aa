"""Plain PyTorch networks (no Lightning here): what the Lightning modules wrap."""

from __future__ import annotations

import torch
from torch import nn


class MLPNet(nn.Module):
    """Feature vector → one logit: `layers` hidden ReLU layers of width `hidden`, dropout."""

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = n_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)
