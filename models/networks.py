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


class SequenceNet(nn.Module):
    """A GRU over a sequence of normalised returns (oldest first), its last state joined with
    a context vector of other features, then a small head → one logit."""

    def __init__(
        self, seq_len: int, n_context: int, hidden: int = 32, head: int = 32, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.gru = nn.GRU(input_size=1, hidden_size=hidden, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(hidden + n_context, head), nn.ReLU(), nn.Dropout(dropout), nn.Linear(head, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, context = x[:, : self.seq_len], x[:, self.seq_len :]
        _, state = self.gru(seq.unsqueeze(-1))
        return self.head(torch.cat([state[-1], context], dim=1)).squeeze(-1)
