"""Per-channel statistics matching, the shared machinery of the Reinhard and mean/std plugins."""

from __future__ import annotations

import torch

from sassl_core.color import as_float_images, channel_stats, match_channel_stats, pool_pixels
from sassl_core.interfaces import StainTransform


class ChannelStatsNormaliser(StainTransform):
    """Match each image's per-channel mean and standard deviation to the targets' in a colour space.

    ``to_space``/``from_space`` convert RGB ``(B, 3, H, W)`` in ``[0, 1]`` to the working space and
    back (default: RGB itself, clipped to ``[0, 1]`` on the way back). With CIELAB this is
    Reinhard et al. (2001) colour transfer.
    """

    def __init__(self, to_space=None, from_space=None) -> None:
        self.to_space = to_space or (lambda rgb: rgb)
        self.from_space = from_space or (lambda x: x.clamp(0.0, 1.0))
        self.target_mean: torch.Tensor | None = None  # (3,)
        self.target_std: torch.Tensor | None = None  # (3,)

    def fit(self, targets) -> ChannelStatsNormaliser:
        """Mean and standard deviation of every channel over all target pixels."""
        mean, std = channel_stats(self.to_space(pool_pixels(as_float_images(targets))))
        self.target_mean, self.target_std = mean[0], std[0]
        return self

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.target_mean is None or self.target_std is None:
            raise RuntimeError(f"{type(self).__name__}: call fit(targets) before transforming")
        return self.from_space(match_channel_stats(self.to_space(batch), self.target_mean, self.target_std))
