"""Stain affinity and relation matrices (paper §3.2, Fig. 3, Eq. 5-6).

For a batch of N patches with discriminator features ``l1 = D(S1)``, ``l2 = D(S2)``:

* the affinity matrix ``A = sigmoid(l1 l2^T / tau)``: ``A_ij`` is how alike D finds the stain
  of patch i (view 1) and patch j (view 2);
* the relation matrix ``R``: ``R_ij = 1`` when patches i and j come from the same stain source
  (slide or centre), so the diagonal is always 1;
* the masked means ``a_same = sum(R * A) / sum(R)`` and ``a_diff = sum((1 - R) * A) / sum(1 - R)``
  are the paper's ``||RA||_1 / ||R||_1`` and ``||(1-R)A||_1 / ||1-R||_1``.

The paper writes ``A = l1 l2^T`` and then takes L1 norms of masked copies. Squashing with a
sigmoid (``squash=True``, the default) keeps every entry in (0, 1), so those L1 norms are plain
sums with a fixed sign and both adversarial players stay bounded; ``squash=False`` gives the
raw product, for which the L1 norm of a masked copy is the sum of absolute values.
"""

from __future__ import annotations

import torch


def relation_matrix(source_ids: torch.Tensor) -> torch.Tensor:
    """(N, N) float matrix, 1 where two patches share a stain source, else 0.

    >>> relation_matrix(torch.tensor([0, 0, 3]))
    tensor([[1., 1., 0.],
            [1., 1., 0.],
            [0., 0., 1.]])
    """
    source_ids = torch.as_tensor(source_ids)
    return (source_ids[:, None] == source_ids[None, :]).float()


def affinity_matrix(
    l1: torch.Tensor, l2: torch.Tensor, temperature: float = 1.0, squash: bool = True, cosine: bool = False
) -> torch.Tensor:
    """``sigmoid(l1 l2^T / temperature)`` (or the raw ``l1 l2^T / temperature`` when not squashed).

    ``cosine`` compares unit-length rows of ``l1``, ``l2``: the logits then stay within
    ``±1 / temperature``, so no player can push the sigmoid into saturation, where both players'
    gradients vanish.

    >>> affinity_matrix(torch.zeros(2, 3), torch.ones(2, 3))
    tensor([[0.5000, 0.5000],
            [0.5000, 0.5000]])
    """
    if cosine:
        l1, l2 = torch.nn.functional.normalize(l1, dim=1), torch.nn.functional.normalize(l2, dim=1)
    logits = l1 @ l2.T / temperature
    return torch.sigmoid(logits) if squash else logits


def masked_means(affinity: torch.Tensor, relation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a_same, a_diff)``: mean L1 magnitude of ``affinity`` over same-/different-source pairs.

    When the batch has no different-source pair (one source only) ``a_diff`` is 0, so it adds
    nothing to either loss; ``a_same`` always has the diagonal. Both are differentiable and free
    of data-dependent branches.

    >>> A = torch.tensor([[0.9, 0.2], [0.4, 0.7]])
    >>> [round(v.item(), 4) for v in masked_means(A, relation_matrix(torch.tensor([0, 1])))]
    [0.8, 0.3]
    >>> [round(v.item(), 4) for v in masked_means(A, relation_matrix(torch.tensor([5, 5])))]
    [0.55, 0.0]
    """
    magnitude = affinity.abs()
    relation = relation.to(magnitude.dtype)
    other = 1.0 - relation
    a_same = (relation * magnitude).sum() / relation.sum().clamp_min(1.0)
    a_diff = (other * magnitude).sum() / other.sum().clamp_min(1.0)
    return a_same, a_diff
