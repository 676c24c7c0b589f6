"""Regression head: pooled fused features -> MLP -> sigmoid (paper §3.3; BreastPathQ cellularity)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

import sassl_core
from sassl_core.hookspecs import Register, TaskFactory
from sassl_core.interfaces import TargetKind
from sassl_core.metrics import regression_metrics
from sassl_plugins.tasks.mlp_head import MLPOptions, PooledMLPHead


class RegressionOptions(MLPOptions):
    pass


class RegressionHead(PooledMLPHead):
    """A value in ``[0, 1]`` per image ``(B,)``; MSE loss; MAE/MSE/R² metrics."""

    headline = "r2"

    def __init__(self, options: RegressionOptions, in_channels: int) -> None:
        super().__init__(options, in_channels, 1)

    def forward(self, levels: Sequence[torch.Tensor], image_size: int) -> torch.Tensor:
        return torch.sigmoid(self.raw(levels)).squeeze(1)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target.to(output.dtype).reshape(output.shape))

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def metrics(self, predictions: np.ndarray, targets: np.ndarray, sources: np.ndarray | None) -> dict:
        return regression_metrics(predictions, targets)

    def headline_score(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        """The headline metric alone (validation, bootstrap intervals)."""
        return regression_metrics(predictions, targets)["r2"]


def build(options: RegressionOptions, feature_channels: Sequence[int], num_outputs: int | None) -> RegressionHead:
    return RegressionHead(options, feature_channels[-1])


@sassl_core.hookimpl
def sassl_register_tasks(register: Register[TaskFactory]) -> None:
    register("reg", build, RegressionOptions, target_kind=TargetKind.TARGET)
