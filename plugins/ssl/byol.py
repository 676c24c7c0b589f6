"""BYOL (Grill et al., 2020), one of the regression-paradigm methods of paper §3.1.

The online branch (encoder, projector, predictor) regresses the projection of the other view
made by a momentum target network (EMA copies of encoder and projector). The momentum rises
from ``base_momentum`` to ``final_momentum`` along a cosine schedule over training.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import sassl_core
from sassl_core.interfaces import SSLOutput
from sassl_core.ssl.losses import byol_regression_loss
from sassl_core.ssl.mlp import build_mlp
from sassl_core.ssl.momentum import MomentumMethod


class BYOLOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    proj_dim: int = Field(256, gt=0, description="projector output size (the embeddings S1, S2)")
    proj_hidden_dim: int = Field(512, gt=0)
    pred_hidden_dim: int = Field(512, gt=0)
    base_momentum: float = Field(0.99, ge=0, le=1, description="target EMA momentum at the start")
    final_momentum: float = Field(1.0, ge=0, le=1, description="target EMA momentum at the end")
    batch_norm: bool = Field(True, description="BatchNorm1d in the heads; false: no batch statistics")


class BYOL(MomentumMethod):
    def __init__(self, options: BYOLOptions, encoder: nn.Module, feature_dim: int) -> None:
        projector = build_mlp(feature_dim, options.proj_hidden_dim, options.proj_dim, batch_norm=options.batch_norm)
        super().__init__(encoder, projector, options.base_momentum, options.final_momentum)
        self.predictor = build_mlp(
            options.proj_dim, options.pred_hidden_dim, options.proj_dim, batch_norm=options.batch_norm
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> SSLOutput:
        (h1, z1), (h2, z2) = self.online_embedding(x1), self.online_embedding(x2)
        t1, t2 = self.target_embedding(x1), self.target_embedding(x2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = byol_regression_loss(p1, t2) + byol_regression_loss(p2, t1)
        return SSLOutput(loss, z1, z2, h1, h2)


def build(options: BYOLOptions, encoder: nn.Module, feature_dim: int) -> BYOL:
    return BYOL(options, encoder, feature_dim)


@sassl_core.hookimpl
def sassl_register_ssl_methods(register) -> None:
    register("byol", build, BYOLOptions)
