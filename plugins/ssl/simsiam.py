"""SimSiam (Chen & He, 2021; paper §3.1, Fig. 2b, Eq. 3).

Two views go through the same encoder and projector; a predictor on one branch regresses the
other branch's projection, whose gradient is stopped. No negatives, no momentum network.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import sassl_core
from sassl_core.interfaces import SSLMethod, SSLOutput
from sassl_core.ssl.losses import negative_cosine_similarity
from sassl_core.ssl.mlp import build_mlp


class SimSiamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    proj_dim: int = Field(256, gt=0, description="projector output size (the embeddings S1, S2)")
    proj_hidden_dim: int = Field(512, gt=0)
    proj_layers: int = Field(3, ge=1, description="Linear layers of the projector")
    pred_hidden_dim: int = Field(128, gt=0, description="predictor bottleneck width")
    batch_norm: bool = Field(True, description="BatchNorm1d in the heads; false: no batch statistics")


class SimSiam(SSLMethod):
    def __init__(self, options: SimSiamOptions, encoder: nn.Module, feature_dim: int) -> None:
        super().__init__(encoder)
        self.projector = build_mlp(
            feature_dim,
            options.proj_hidden_dim,
            options.proj_dim,
            options.proj_layers,
            batch_norm=options.batch_norm,
            last_batch_norm=options.batch_norm,
        )
        self.predictor = build_mlp(
            options.proj_dim, options.pred_hidden_dim, options.proj_dim, num_layers=2, batch_norm=options.batch_norm
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> SSLOutput:
        h1, h2 = self.encoder(x1), self.encoder(x2)
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * (negative_cosine_similarity(p1, z2.detach()) + negative_cosine_similarity(p2, z1.detach()))
        return SSLOutput(loss, z1, z2, h1, h2)


def build(options: SimSiamOptions, encoder: nn.Module, feature_dim: int) -> SimSiam:
    return SimSiam(options, encoder, feature_dim)


@sassl_core.hookimpl
def sassl_register_ssl_methods(register) -> None:
    register("simsiam", build, SimSiamOptions)
