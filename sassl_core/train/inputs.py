"""Model inputs: the one place where uint8 patches become what an encoder reads.

Every stage reads patches through :class:`ModelInput`, so the tensor reaching the encoder for a
given patch is built the same way in pretraining, fine-tuning, evaluation, the centre probe and
heatmaps: the run's stain transform (``data.stain_norm``, a Table 1 baseline of the paper, fitted
on ``data.stain_target``) on the uint8 patch, then ``[0, 1]`` floats, then ``(x - mean) / std``
with the statistics of ``inputs`` (:class:`sassl_core.config.InputConfig`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from sassl_core.color import as_float_images
from sassl_core.config import InputConfig, RunConfig
from sassl_core.errors import UserError
from sassl_core.interfaces import StainTransform
from sassl_core.plugins import PluginSet

StainFunction = Callable[[torch.Tensor], torch.Tensor]


def read_target(path) -> np.ndarray:
    """The stain target image as uint8 ``(1, H, W, 3)``."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))[None]
    except (OSError, ValueError) as err:
        raise UserError(f"data.stain_target: cannot read image {path} ({err})") from None


def fit_stain_transform(cfg: RunConfig, plugins: PluginSet) -> StainTransform | None:
    """The run's stain transform fitted on ``data.stain_target``, or ``None`` when the run
    normalises no stain."""
    if cfg.data.stain_norm is None:
        return None
    if cfg.data.stain_target is None:
        raise UserError(
            f"data.stain_target: stain transform '{cfg.data.stain_norm}' needs a target image (--stain-target)"
        )
    transform = plugins["stain"].create(cfg.data.stain_norm, cfg.data.stain_norm_options)
    transform.fit(read_target(cfg.data.stain_target))
    return transform


def build_stain_norm(cfg: RunConfig, plugins: PluginSet) -> StainFunction | None:
    """A function mapping uint8 ``(B, H, W, 3)`` batches to stain-normalised uint8 batches, or
    ``None`` when the run normalises no stain."""
    transform = fit_stain_transform(cfg, plugins)
    return None if transform is None else stain_function(transform)


def stain_function(transform: StainTransform) -> StainFunction:
    """A fitted ``transform`` applied to uint8 ``(B, H, W, 3)`` batches, giving uint8 batches."""

    def normalise(images: torch.Tensor) -> torch.Tensor:
        floats = images.permute(0, 3, 1, 2).float().div_(255)
        out = transform(floats).clamp_(0, 1).mul_(255).round_()
        return out.to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    return normalise


class ModelInput(nn.Module):
    """uint8 ``(B, H, W, 3)`` patches → stain transform → ``[0, 1]`` → ``(x - mean) / std``.

    >>> inputs = ModelInput(InputConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    >>> inputs(torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)).flatten().tolist()[:3]
    [1.0, 1.0, 1.0]
    """

    mean: torch.Tensor  # buffers (1, 3, 1, 1)
    std: torch.Tensor

    def __init__(self, stats: InputConfig, stain: StainFunction | None = None) -> None:
        super().__init__()
        self.stain = stain
        self.register_buffer("mean", torch.tensor(stats.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(stats.std).view(1, 3, 1, 1), persistent=False)

    def stain_normalise(self, images: torch.Tensor) -> torch.Tensor:
        """The run's stain transform of uint8 ``images`` (themselves when there is none)."""
        return images if self.stain is None else self.stain(images)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` of float images ``(B, 3, H, W)`` in ``[0, 1]``, in place."""
        return x.sub_(self.mean.to(x)).div_(self.std.to(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scale(as_float_images(self.stain_normalise(images)))


def build_model_input(cfg: RunConfig, plugins: PluginSet) -> ModelInput:
    """The run's :class:`ModelInput` (its stain transform fitted on ``data.stain_target``)."""
    return ModelInput(cfg.inputs, build_stain_norm(cfg, plugins))
