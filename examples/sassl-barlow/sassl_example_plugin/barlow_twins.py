"""Barlow Twins as a sassl SSL method.

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", ICML 2021
(Eq. 1). SASSL (paper §3.1) wraps any method that maps two views to a loss and to per-view
embeddings ``S1, S2``; here those are the projector outputs ``z1, z2`` of the two views.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sassl_core.interfaces import SSLMethod, SSLOutput
from sassl_core.ssl.distributed import gather_with_grad
from sassl_core.ssl.losses import in_float32
from sassl_core.ssl.mlp import build_mlp


class BarlowTwinsOptions(BaseModel):
    """Options of ``barlow_twins`` (defaults scaled down from the paper's 8192-wide projector)."""

    model_config = ConfigDict(extra="forbid")

    proj_hidden_dim: int = Field(2048, ge=1)
    proj_dim: int = Field(2048, ge=1)
    redundancy_weight: float = Field(5e-3, ge=0)  # λ of Barlow Twins Eq. 1


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The ``(d, d)`` cross-correlation ``C`` of two ``(B, d)`` embeddings along the batch.

    Each dimension is standardised over the batch, so ``C_ij`` is the Pearson correlation of
    dimension ``i`` of view 1 with dimension ``j`` of view 2 (Barlow Twins Eq. 2).
    """
    z1 = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + eps)
    z2 = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + eps)
    return z1.T @ z2 / z1.shape[0]


@in_float32
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, redundancy_weight: float = 5e-3) -> torch.Tensor:
    """``Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²`` (Barlow Twins Eq. 1).

    The invariance term pulls the diagonal of ``C`` to 1; the redundancy-reduction term pushes
    the off-diagonal to 0.

    >>> z = torch.randn(64, 8)
    >>> float(barlow_twins_loss(z, z, redundancy_weight=0.0)) < 1e-6  # identical views
    True
    >>> float(barlow_twins_loss(z, torch.randn(64, 8), redundancy_weight=0.0)) > 1.0
    True
    """
    c = cross_correlation(z1, z2)
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diagonal + redundancy_weight * off_diagonal


class BarlowTwins(SSLMethod):
    """Shared encoder and projector for both views; no predictor, no momentum network.

    The projector is Linear-BN-ReLU, Linear-BN-ReLU, Linear (Barlow Twins §3). ``C`` is computed
    over the global batch, so the loss does not change with the number of GPUs.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, options: BarlowTwinsOptions) -> None:
        super().__init__(encoder)
        self.projector = build_mlp(feature_dim, options.proj_hidden_dim, options.proj_dim, num_layers=3)
        self.redundancy_weight = options.redundancy_weight

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> SSLOutput:
        h1, h2 = self.encoder(x1), self.encoder(x2)
        z1, z2 = self.projector(h1), self.projector(h2)
        loss = barlow_twins_loss(gather_with_grad(z1), gather_with_grad(z2), self.redundancy_weight)
        return SSLOutput(loss, z1, z2, h1, h2)


def build_barlow_twins(options: BarlowTwinsOptions, encoder: nn.Module, feature_dim: int) -> BarlowTwins:
    """Factory registered as ``barlow_twins`` (signature fixed by ``sassl_register_ssl_methods``)."""
    return BarlowTwins(encoder, feature_dim, options)
