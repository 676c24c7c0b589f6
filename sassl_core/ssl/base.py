"""The interface every SSL method implements (paper §3.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class SSLOutput:
    """A method's loss and the per-view embeddings the stain discriminator reads: S1, S2 (the
    paper's), or the encoder's pooled features H1, H2 with ``sassl.embedding = 'encoder'``."""

    loss: torch.Tensor
    s1: torch.Tensor  # (B, d) online projector output of view 1
    s2: torch.Tensor  # (B, d) online projector output of view 2
    h1: torch.Tensor | None = None  # (B, feature_dim) online encoder output of view 1, if the method gives it
    h2: torch.Tensor | None = None


class SSLMethod(nn.Module):
    """Base class: wraps ``encoder`` (pooled features) with the method's heads and loss.

    Subclasses implement :meth:`forward`. Methods with a momentum/target network override
    :meth:`after_step`, which the trainer calls after every optimiser step with the training
    progress in ``[0, 1]``.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> SSLOutput:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Hook for momentum updates; nothing by default."""
