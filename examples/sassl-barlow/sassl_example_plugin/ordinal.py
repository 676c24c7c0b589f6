"""An ordinal-regression head for graded labels (e.g. PANDA ISUP grade 0–5).

A cumulative-link model (McCullagh, 1980) in the rank-consistent form of CORAL (Cao et al.,
2020): one score ``f(x)`` per image and ``K − 1`` ordered thresholds ``θ_0 < … < θ_{K−2}``,
``P(y > k) = σ(f(x) − θ_k)``. Ordered thresholds keep those probabilities decreasing in ``k``,
so the class probabilities are never negative. The SASSL paper scores PANDA grades with the
quadratic weighted kappa (§4.2), which rewards exactly this kind of near-miss-aware prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sassl_core.errors import UserError
from sassl_core.interfaces import TaskHead
from sassl_core.metrics import classification_metrics, quadratic_weighted_kappa
from sassl_core.ssl.mlp import build_mlp


class OrdinalOptions(BaseModel):
    """Options of the ``ordinal`` task."""

    model_config = ConfigDict(extra="forbid")

    hidden_dim: int = Field(256, ge=1)
    num_layers: int = Field(2, ge=1)  # Linear layers of the score MLP; 1: a linear score
    dropout: float = Field(0.0, ge=0, lt=1)  # on the pooled features


def exceedance_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, K−1)`` binary targets ``[y > 0, y > 1, …, y > K−2]``.

    >>> exceedance_targets(torch.tensor([0, 2]), 4)
    tensor([[0., 0., 0.],
            [1., 1., 0.]])
    """
    ranks = torch.arange(num_classes - 1, device=labels.device)
    return (labels.long().unsqueeze(1) > ranks).float()


def class_probabilities(cumulative_logits: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` class probabilities from the ``(B, K−1)`` logits of ``P(y > k)``.

    ``P(y = k) = P(y > k − 1) − P(y > k)`` with ``P(y > −1) = 1`` and ``P(y > K − 1) = 0``.
    """
    exceed = torch.sigmoid(cumulative_logits)
    ones = torch.ones_like(exceed[:, :1])
    zeros = torch.zeros_like(exceed[:, :1])
    return torch.cat([ones, exceed], dim=1) - torch.cat([exceed, zeros], dim=1)


class OrdinalHead(TaskHead):
    """Pooled deepest level → scalar score → cumulative logits against ordered thresholds.

    Registered with ``target_kind=TargetKind.LABEL``: it learns from the dataset's class labels
    and predicts class probabilities ``(B, K)``, so the core's defaults for labels (heatmap
    value, slide pooling) apply. Its ``forward`` returns ``K − 1`` cumulative logits, not one
    score per class, so Grad-CAM does not explain it.
    """

    class_scores = False
    headline = "qwk"  # the metric evaluation reports with a bootstrap interval and validation selects on

    def __init__(self, in_channels: int, num_classes: int, options: OrdinalOptions) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout(options.dropout)
        self.score = build_mlp(in_channels, options.hidden_dim, 1, options.num_layers, batch_norm=False)
        # θ_0 and the gaps θ_{k+1} − θ_k = softplus(g_k) > 0, centred around a score of 0.
        self.first_threshold = nn.Parameter(torch.tensor([-(num_classes - 2) / 2.0]))
        self.threshold_gaps = nn.Parameter(torch.full((num_classes - 2,), math.log(math.e - 1)))  # gaps of 1

    def thresholds(self) -> torch.Tensor:
        """The ``K − 1`` strictly increasing thresholds ``θ``."""
        steps = torch.cumsum(F.softplus(self.threshold_gaps), dim=0)
        return torch.cat([self.first_threshold, self.first_threshold + steps])

    def forward(self, levels: Sequence[torch.Tensor], image_size: int) -> torch.Tensor:
        pooled = levels[-1].float().mean(dim=(2, 3))
        return self.score(self.dropout(pooled)) - self.thresholds()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy over the ``K − 1`` "grade exceeds k" questions."""
        return F.binary_cross_entropy_with_logits(output, exceedance_targets(target, self.num_classes))

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return class_probabilities(output)

    def metrics(self, predictions: np.ndarray, targets: np.ndarray, sources: np.ndarray) -> dict:
        return classification_metrics(predictions, targets, sources, num_classes=self.num_classes)

    def headline_score(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        """The headline metric alone: QWK of the most probable grades."""
        return quadratic_weighted_kappa(targets, predictions.argmax(1), self.num_classes)


def build_ordinal(options: OrdinalOptions, feature_channels: Sequence[int], num_outputs: int | None) -> OrdinalHead:
    """Factory registered as ``ordinal`` (signature fixed by ``sassl_register_tasks``)."""
    if num_outputs is None or num_outputs < 2:
        raise UserError(f"task 'ordinal': expected a dataset with at least 2 ordered classes, found {num_outputs}")
    return OrdinalHead(feature_channels[-1], num_outputs, options)
