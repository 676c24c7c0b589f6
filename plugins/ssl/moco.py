"""MoCo v2 (Chen et al., 2020; paper §3.1, Fig. 2a, Eq. 2).

Queries come from the online encoder + projector, keys from their momentum (EMA) copies.
Each query is scored against its key and a queue of keys from earlier batches with InfoNCE;
the loss is symmetrised over the two views. After the loss, the keys of the whole global
batch are enqueued (oldest out), so the negatives do not depend on the number of processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import sassl_core
from sassl_core.interfaces import SSLOutput
from sassl_core.ssl.distributed import gather_with_grad
from sassl_core.ssl.losses import info_nce
from sassl_core.ssl.mlp import build_mlp
from sassl_core.ssl.momentum import MomentumMethod


class MoCoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    proj_dim: int = Field(128, gt=0, description="projector output size (the embeddings S1, S2)")
    proj_hidden_dim: int = Field(512, gt=0)
    queue_size: int = Field(4096, gt=0, description="number of negative keys kept")
    temperature: float = Field(0.2, gt=0)
    base_momentum: float = Field(0.99, ge=0, le=1, description="EMA momentum of the key encoder")
    final_momentum: float = Field(0.99, ge=0, le=1, description="momentum at the end (cosine schedule)")


class MoCo(MomentumMethod):
    queue: torch.Tensor  # buffers: (queue_size, proj_dim) unit keys, and the next write position
    queue_ptr: torch.Tensor

    def __init__(self, options: MoCoOptions, encoder: nn.Module, feature_dim: int) -> None:
        projector = build_mlp(feature_dim, options.proj_hidden_dim, options.proj_dim, batch_norm=False)
        super().__init__(encoder, projector, options.base_momentum, options.final_momentum)
        self.temperature = options.temperature
        self.register_buffer("queue", F.normalize(torch.randn(options.queue_size, options.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> SSLOutput:
        (h1, q1), (h2, q2) = self.online_embedding(x1), self.online_embedding(x2)
        k1, k2 = self.target_embedding(x1), self.target_embedding(x2)
        negatives = self.queue.clone()  # the queue changes below, autograd needs this snapshot
        loss = 0.5 * (info_nce(q1, k2, negatives, self.temperature) + info_nce(q2, k1, negatives, self.temperature))
        if self.training:
            self.enqueue(gather_with_grad(torch.cat([k1, k2])))
        return SSLOutput(loss, q1, q2, h1, h2)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` over the oldest queue entries (the write position wraps around)."""
        size = self.queue.shape[0]
        keys = F.normalize(keys[-size:].to(self.queue.dtype), dim=1)
        slots = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[slots] = keys
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)


def build(options: MoCoOptions, encoder: nn.Module, feature_dim: int) -> MoCo:
    return MoCo(options, encoder, feature_dim)


@sassl_core.hookimpl
def sassl_register_ssl_methods(register) -> None:
    register("moco", build, MoCoOptions)
