"""Classification head: pooled fused features -> MLP -> softmax (paper §3.3; PANDA ISUP, TCGA).

The headline metric is the balanced accuracy; graded labels (PANDA ISUP, the synthetic and
restained grades of the benchmark) add QWK as the headline with ``--set task.options.ordinal=true``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

import sassl_core
from sassl_core.errors import UserError
from sassl_core.hookspecs import Register, TaskFactory
from sassl_core.interfaces import TargetKind
from sassl_core.metrics import balanced_accuracy, classification_metrics, quadratic_weighted_kappa
from sassl_plugins.tasks.mlp_head import MLPOptions, PooledMLPHead


class ClassificationOptions(MLPOptions):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # true for ordered classes (grades: PANDA ISUP, the synthetic grades): adds QWK, the headline
    # metric; unordered ones (TCGA tumour types, benign/malignant) keep the balanced accuracy
    ordinal: bool = False


class ClassificationHead(PooledMLPHead):
    """Logits ``(B, K)``; cross-entropy loss; softmax probabilities; QWK (ordinal classes),
    accuracy, balanced accuracy, F1 and AUROC metrics."""

    def __init__(self, options: ClassificationOptions, in_channels: int, num_classes: int) -> None:
        super().__init__(options, in_channels, num_classes)
        self.num_classes = num_classes
        self.label_smoothing = options.label_smoothing
        self.ordinal = options.ordinal
        self.headline = "qwk" if options.ordinal else "balanced_accuracy"

    def forward(self, levels: Sequence[torch.Tensor], image_size: int) -> torch.Tensor:
        return self.raw(levels)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target.long(), label_smoothing=self.label_smoothing)

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output.softmax(dim=1)

    def metrics(self, predictions: np.ndarray, targets: np.ndarray, sources: np.ndarray | None) -> dict:
        return classification_metrics(predictions, targets, sources, num_classes=self.num_classes, ordinal=self.ordinal)

    def headline_score(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        """The headline metric alone (validation, bootstrap intervals)."""
        labels = predictions.argmax(1)
        if self.ordinal:
            return quadratic_weighted_kappa(targets, labels, self.num_classes)
        return balanced_accuracy(targets, labels)


def build(
    options: ClassificationOptions, feature_channels: Sequence[int], num_outputs: int | None
) -> ClassificationHead:
    if num_outputs is None or num_outputs < 2:
        raise UserError(f"task 'cls': expected at least 2 classes, found {num_outputs}")
    return ClassificationHead(options, feature_channels[-1], num_outputs)


@sassl_core.hookimpl
def sassl_register_tasks(register: Register[TaskFactory]) -> None:
    register("cls", build, ClassificationOptions, target_kind=TargetKind.LABEL)
