"""SimCLR (Chen et al., 2020): the in-batch contrastive paradigm of paper §3.1 (Eq. 2).

One encoder + projector embeds both views; NT-Xent treats the other view of each image as its
positive and every other view of the global batch (all processes) as a negative.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import sassl_core
from sassl_core.interfaces import SSLMethod, SSLOutput
from sassl_core.ssl.losses import nt_xent
from sassl_core.ssl.mlp import build_mlp


class SimCLROptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    proj_dim: int = Field(128, gt=0, description="projector output size (the embeddings S1, S2)")
    proj_hidden_dim: int = Field(512, gt=0)
    temperature: float = Field(0.1, gt=0)
    batch_norm: bool = Field(True, description="BatchNorm1d in the heads; false: no batch statistics")


class SimCLR(SSLMethod):
    def __init__(self, options: SimCLROptions, encoder: nn.Module, feature_dim: int) -> None:
        super().__init__(encoder)
        self.projector = build_mlp(
            feature_dim, options.proj_hidden_dim, options.proj_dim, batch_norm=options.batch_norm
        )
        self.temperature = options.temperature

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> SSLOutput:
        h1, h2 = self.encoder(x1), self.encoder(x2)
        z1, z2 = self.projector(h1), self.projector(h2)
        return SSLOutput(nt_xent(z1, z2, self.temperature), z1, z2, h1, h2)


def build(options: SimCLROptions, encoder: nn.Module, feature_dim: int) -> SimCLR:
    return SimCLR(options, encoder, feature_dim)


@sassl_core.hookimpl
def sassl_register_ssl_methods(register) -> None:
    register("simclr", build, SimCLROptions)
