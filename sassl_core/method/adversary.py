"""The stain-adaptive adversarial objective (paper §3.2, Eq. 4-6).

The SSL model is the generator G, the stain discriminator D its adversary:

* ``L_D = a_diff - a_same`` — D learns to give same-source pairs a high affinity and
  different-source pairs a low one (Eq. 6);
* ``L_G = L_ssl - lam * (a_same + a_diff)`` — G makes every pair look alike to D, i.e. learns
  stain-invariant embeddings (Eq. 5; with a sigmoid affinity, ``a_same + a_diff`` plays the role
  of the paper's ``||A||_1 / N^2``).

D reads L2-normalised embeddings by default (``normalize=True``). Every shipped SSL loss is
invariant to the scale of S (all are cosine-based), so with raw embeddings the generator can
raise every affinity by inflating S until the sigmoid saturates and both players' gradients
vanish; in a 40-step MoCo run on two stain sources that happened within 35 steps
(a_same = a_diff = 0.999), while with normalised S, D kept a_same above a_diff.

Training alternates: a D step on detached embeddings (:meth:`StainAdversary.discriminator_loss`),
then a G step with D frozen (:meth:`StainAdversary.generator_term`, added to ``L_ssl``), each with
its own optimiser. Both read the global batch (every process's S1, S2 and source ids), so the
affinity matrix does not depend on the number of GPUs. Any SSL method works: only S1, S2 are used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sassl_core.method.affinity import affinity_matrix, masked_means, relation_matrix
from sassl_core.method.discriminator import StainDiscriminator
from sassl_core.ssl.distributed import gather_with_grad

Stats = dict[str, torch.Tensor]


class StainAdversary(nn.Module):
    """The stain discriminator together with its two adversarial losses.

    ``lam`` weighs the generator term; it rises linearly from 0 to ``lam`` over the first
    ``warmup_steps`` optimiser steps (none when 0). ``temperature``, ``squash`` and ``cosine``
    shape the affinity matrix (:func:`sassl_core.method.affinity.affinity_matrix`); ``normalize``
    feeds D unit-length embeddings; ``generator`` picks G's term (:meth:`generator_term`).
    """

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int = 256,
        layers: int = 3,
        temperature: float = 1.0,
        squash: bool = True,
        cosine: bool = False,
        generator: str = "affinity",
        lam: float = 1.0,
        warmup_steps: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.discriminator = StainDiscriminator(embed_dim, hidden_dim, layers)
        self.temperature = temperature
        self.squash = squash
        self.cosine = cosine
        self.generator = generator
        self.lam = lam
        self.warmup_steps = warmup_steps
        self.normalize = normalize

    def lam_at(self, step: int) -> float:
        """The generator weight at optimiser step ``step`` (linear warm-up from 0)."""
        if self.warmup_steps <= 0:
            return self.lam
        return self.lam * min(1.0, max(step, 0) / self.warmup_steps)

    def affinity_means(
        self,
        s1: torch.Tensor,
        s2: torch.Tensor,
        source_ids: torch.Tensor,
        frozen: bool = False,
        discriminator: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_same, a_diff)`` over the global batch; ``frozen`` runs D with detached weights,
        otherwise ``discriminator`` (D itself, or a wrapper of it such as DistributedDataParallel)."""
        s1, s2 = gather_with_grad(s1), gather_with_grad(s2)
        source_ids = gather_with_grad(torch.as_tensor(source_ids, device=s1.device))
        if self.normalize:
            s1, s2 = F.normalize(s1, dim=1), F.normalize(s2, dim=1)
        if frozen:
            weights = {name: p.detach() for name, p in self.discriminator.named_parameters()}
            l1 = functional_call(self.discriminator, weights, (s1,))
            l2 = functional_call(self.discriminator, weights, (s2,))
        else:
            net = discriminator or self.discriminator
            l1, l2 = net(s1), net(s2)
        affinity = affinity_matrix(l1, l2, self.temperature, self.squash, self.cosine)
        return masked_means(affinity, relation_matrix(source_ids))

    def discriminator_loss(
        self, s1: torch.Tensor, s2: torch.Tensor, source_ids: torch.Tensor, discriminator: nn.Module | None = None
    ) -> tuple[torch.Tensor, Stats]:
        """``L_D = a_diff - a_same`` on detached embeddings (paper Eq. 6), scored by
        ``discriminator`` (default: D)."""
        a_same, a_diff = self.affinity_means(s1.detach(), s2.detach(), source_ids, discriminator=discriminator)
        loss = a_diff - a_same
        return loss, _stats(a_same, a_diff)

    def generator_term(
        self, s1: torch.Tensor, s2: torch.Tensor, source_ids: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, Stats]:
        """The adversarial term to add to ``L_ssl``, weighted by ``lam(step)``:

        * ``generator='affinity'``: ``-lam * (a_same + a_diff)``, every affinity high (paper Eq. 5);
        * ``generator='confusion'``: ``lam * (a_same - a_diff) = -lam * L_D``, G maximises D's own
          loss (the minimax of Eq. 4 read literally).

        Gradients flow through D into the embeddings; D's parameters receive none.
        """
        a_same, a_diff = self.affinity_means(s1, s2, source_ids, frozen=True)
        if self.generator == "confusion":
            term = self.lam_at(step) * (a_same - a_diff)
        else:
            term = -self.lam_at(step) * (a_same + a_diff)
        return term, _stats(a_same, a_diff)


def _stats(a_same: torch.Tensor, a_diff: torch.Tensor) -> Stats:
    """Detached 0-d tensors for logging: reading them back is left to the trainer, once a step,
    so the step runs without waiting for the device."""
    a_same, a_diff = a_same.detach().float(), a_diff.detach().float()
    return {"a_same": a_same, "a_diff": a_diff, "L_D": a_diff - a_same}
