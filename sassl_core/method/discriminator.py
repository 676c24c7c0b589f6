"""The stain discriminator D (paper §3.2, Fig. 1).

A stack of Linear + LeakyReLU layers reading an SSL embedding S (B, d) and returning the
stain feature l (B, hidden_dim). A shortcut from the input (a bias-free linear projection when
the widths differ) is added after the last LeakyReLU, so gradients reach the encoder directly.
"""

from __future__ import annotations

import torch
from torch import nn


class StainDiscriminator(nn.Module):
    """``l = LeakyReLU(...LeakyReLU(Linear(S))...) + shortcut(S)`` with ``layers`` Linear layers.

    >>> d = StainDiscriminator(in_dim=8, hidden_dim=16, layers=3)
    >>> d(torch.randn(4, 8)).shape
    torch.Size([4, 16])
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, layers: int = 3, negative_slope: float = 0.2) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers: expected at least 1, found {layers}")
        stack: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            stack += [nn.Linear(width, hidden_dim), nn.LeakyReLU(negative_slope)]
            width = hidden_dim
        self.body = nn.Sequential(*stack)
        self.shortcut = nn.Identity() if in_dim == hidden_dim else nn.Linear(in_dim, hidden_dim, bias=False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.body(s) + self.shortcut(s)
