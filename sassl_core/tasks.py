"""The interface of a downstream task head (paper §3.3, Fig. 4)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


class TaskHead(nn.Module):
    """A head over the fused multi-level features ``f_e`` of the dual encoder.

    ``target_kind`` says which patch-table column supervises it: ``'label'`` (cls),
    ``'target'`` (reg) or ``'mask'`` (seg).
    """

    target_kind: str = "label"

    def forward(self, levels: Sequence[torch.Tensor], image_size: int) -> torch.Tensor:  # pragma: no cover
        """``levels``: fused features, shallow to deep, each ``(B, C_l, H_l, W_l)``."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def predict(self, output: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Probabilities ``(B, K)`` (cls), values ``(B,)`` (reg) or class maps ``(B, H, W)`` (seg)."""
        raise NotImplementedError

    def metrics(
        self, predictions: np.ndarray, targets: np.ndarray, sources: np.ndarray
    ) -> dict:  # pragma: no cover
        """The paper's metrics for this task (keys fixed by the task; see sassl_core.metrics)."""
        raise NotImplementedError
