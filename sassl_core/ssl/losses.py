"""Self-supervised losses (paper §3.1, Eq. 2-3), shared by the method plugins.

Every loss L2-normalises its inputs itself and averages over the batch, in float32 even under
bf16/fp16 autocast (:func:`in_float32`). Stop-gradients are the caller's business (a method
detaches its targets explicitly, where the reader can see it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

from sassl_core.ssl.distributed import gather_with_grad, world_info

Loss = TypeVar("Loss", bound=Callable[..., torch.Tensor])


def in_float32(loss: Loss) -> Loss:
    """Decorator: compute ``loss`` in float32 with autocast off, whatever the dtype of its tensor
    arguments (bf16 cosines and softmaxes lose the precision a loss needs, and some ops refuse
    mixed dtypes). Gradients flow back to the low-precision inputs as usual.

    >>> @in_float32
    ... def mean(x):
    ...     return x.mean()
    >>> mean(torch.ones(3, dtype=torch.bfloat16)).dtype
    torch.float32
    """

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device.type if tensors else "cpu"

        def cast(a):
            return a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        with torch.autocast(device, enabled=False):
            return loss(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


@in_float32
def negative_cosine_similarity(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean of ``-cos(p_i, z_i)`` (SimSiam, paper Eq. 3 up to the constant 1).

    >>> p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> negative_cosine_similarity(p, p).item()
    -1.0
    >>> negative_cosine_similarity(p, -p).item()
    1.0
    """
    return -F.cosine_similarity(p, z, dim=-1).mean()


@in_float32
def byol_regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's mean squared error of normalised vectors, ``2 - 2 cos(p_i, z_i)`` averaged.

    >>> p = torch.tensor([[3.0, 4.0]])
    >>> byol_regression_loss(p, p).item()
    0.0
    >>> byol_regression_loss(p, -p).item()
    4.0
    """
    return 2.0 + 2.0 * negative_cosine_similarity(p, z)


@in_float32
def info_nce(
    query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """InfoNCE (paper Eq. 2): each query against its positive and K shared negatives.

    ``query``, ``positive``: (B, d); ``negatives``: (K, d) (MoCo's queue). Similarities are
    cosines divided by ``temperature``; the loss is the cross-entropy of the positive.

    >>> q = torch.tensor([[1.0, 0.0]])
    >>> round(info_nce(q, q, torch.tensor([[0.0, 1.0]]), temperature=1.0).item(), 4)
    0.3133
    """
    query = F.normalize(query, dim=-1)
    positive = F.normalize(positive, dim=-1)
    negatives = F.normalize(negatives, dim=-1)
    pos = (query * positive).sum(dim=-1, keepdim=True)
    neg = query @ negatives.T
    logits = torch.cat([pos, neg], dim=1) / temperature
    target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target)


@in_float32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent over the 2B views of the global batch.

    Each view's positive is the other view of its image; the other 2B - 2 views are negatives.
    Under torch.distributed, this rank's views are scored against the views of every rank
    (gathered with gradients), so the loss does not depend on the number of processes.

    >>> z = torch.eye(2)  # two images, identical orthogonal views
    >>> round(nt_xent(z, z, temperature=1.0).item(), 4)  # -log(e / (e + 2))
    0.5514
    """
    rank, _ = world_info()
    local = F.normalize(torch.cat([z1, z2]), dim=-1)
    views1 = gather_with_grad(local[: len(z1)])
    views2 = gather_with_grad(local[len(z1) :])
    keys = torch.cat([views1, views2])
    logits = local @ keys.T / temperature
    rows, total = len(z1), len(views1)
    index = torch.arange(rows, device=local.device) + rank * rows
    self_index = torch.cat([index, index + total])
    partner_index = torch.cat([index + total, index])
    own_view = (torch.arange(2 * rows, device=local.device), self_index)
    logits = logits.index_put(own_view, torch.tensor(float("-inf"), device=local.device))
    return F.cross_entropy(logits, partner_index)
