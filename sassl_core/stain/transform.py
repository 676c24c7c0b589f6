"""The interface of a stain normaliser or augmenter (the paper's Table 1 baselines)."""

from __future__ import annotations

import torch


class StainTransform:
    """Fit on target images, then transform batches on any device.

    ``fit`` takes uint8 images ``(N, H, W, 3)`` (a numpy array or tensor); ``__call__`` takes a
    float batch ``(B, 3, H, W)`` in ``[0, 1]`` and returns one of the same shape and device.
    """

    def fit(self, targets) -> "StainTransform":  # pragma: no cover
        raise NotImplementedError

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
