"""Momentum (EMA) target networks, shared by BYOL and MoCo.

The target branch is a frozen copy of the online encoder and projector, moved towards them
after every optimiser step: ``target <- m * target + (1 - m) * online``. BYOL raises ``m`` from
its base value to 1 along a cosine schedule; MoCo keeps it constant (base = final).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from sassl_core.interfaces import SSLMethod


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters take no gradient."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``p_target <- momentum * p_target + (1 - momentum) * p_online`` for every parameter.

    Buffers (batch-norm statistics) are left alone: the target keeps its own running
    statistics from its own forward passes.

    >>> online, target = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    >>> _ = online.weight.data.fill_(1.0), target.weight.data.fill_(0.0)
    >>> ema_update(target, online, momentum=0.9)
    >>> round(target.weight.item(), 6)
    0.1
    """
    target_params: list[torch.Tensor] = list(target.parameters())
    online_params: list[torch.Tensor] = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("ema_update: target and online networks have different parameters")
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)


def cosine_momentum(progress: float, base: float, final: float = 1.0) -> float:
    """BYOL's schedule ``final - (final - base) * (cos(pi * progress) + 1) / 2``.

    ``progress`` in [0, 1] is the fraction of training done: ``base`` at 0, ``final`` at 1.

    >>> cosine_momentum(0.0, 0.99), cosine_momentum(1.0, 0.99)
    (0.99, 1.0)
    """
    progress = min(max(progress, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class MomentumMethod(SSLMethod):
    """An SSL method with an online encoder + projector and their EMA target copies.

    Subclasses call :meth:`target_embedding` for the target branch; the trainer calls
    :meth:`after_step` after every optimiser step, which moves the target towards the online
    branch with momentum ``cosine_momentum(progress, base_momentum, final_momentum)``.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, base_momentum: float, final_momentum: float) -> None:
        super().__init__(encoder)
        self.projector = projector
        self.target_encoder = frozen_copy(encoder)
        self.target_projector = frozen_copy(projector)
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum

    def online_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encoder features, projector output)`` of the online branch."""
        h = self.encoder(x)
        return h, self.projector(h)

    @torch.no_grad()
    def target_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_encoder(x))

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        momentum = cosine_momentum(progress, self.base_momentum, self.final_momentum)
        ema_update(self.target_encoder, self.encoder, momentum)
        ema_update(self.target_projector, self.projector, momentum)
