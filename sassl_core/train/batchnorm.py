"""BatchNorm statistics re-estimated on one domain's data (AdaBN: Li et al. 2016, "Revisiting
batch normalization for practical domain adaptation").

A centre's stain largely travels in the first and second moments of the encoder's activations;
BatchNorm layers normalise with statistics gathered on the training centres. Re-estimating
them on the (unlabelled) patches of the centre a model is applied to removes that part of the
shift without touching a weight.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def adapted_copy(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    forward: Callable[[nn.Module, torch.Tensor], object] | None = None,
) -> nn.Module:
    """A copy of ``model`` in eval mode whose BatchNorm statistics are the plain average over
    ``batches`` (``forward(model, batch)`` runs one, default ``model(batch)``); ``model`` itself is
    left unchanged.

    >>> bn = nn.BatchNorm1d(2)
    >>> adapted_copy(bn, [torch.tensor([[1.0, 4.0], [3.0, 8.0]])]).running_mean.tolist()
    [2.0, 6.0]
    """
    adapted = copy.deepcopy(model)
    for module in adapted.modules():
        if isinstance(module, BATCHNORMS):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over every batch
    adapted.train()
    with torch.no_grad():
        for batch in batches:
            (forward or (lambda m, x: m(x)))(adapted, batch)
    return adapted.eval()
