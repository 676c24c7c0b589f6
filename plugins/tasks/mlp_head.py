"""The pooled-MLP head shared by classification and regression (paper §3.3, Fig. 4).

The deepest fused level ``f_e`` is global-average-pooled and fed to an MLP
(:func:`sassl_core.ssl.mlp.build_mlp`); subclasses add the output activation, loss and metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sassl_core.interfaces import TaskHead
from sassl_core.ssl.mlp import build_mlp


class MLPOptions(BaseModel):
    """Shape of the MLP over the pooled deepest level."""

    model_config = ConfigDict(extra="forbid")
    hidden_dim: int = Field(256, ge=1)
    num_layers: int = Field(2, ge=1)
    batch_norm: bool = False  # off by default: a last training batch of one sample would fail
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the pooled features


class PooledMLPHead(TaskHead):
    """``MLP(dropout(mean_{h,w} f_e^L))`` -> ``(B, out_dim)`` raw outputs."""

    def __init__(self, options: MLPOptions, in_channels: int, out_dim: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout(options.dropout)
        self.mlp = build_mlp(in_channels, options.hidden_dim, out_dim, options.num_layers, options.batch_norm)

    def raw(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.dropout(levels[-1].mean(dim=(2, 3))))
