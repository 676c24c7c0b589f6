"""Stain normalisation applied to every batch on the device (the paper's Table 1 baselines)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.plugins import PluginSet


def read_target(path) -> np.ndarray:
    """The stain target image as uint8 ``(1, H, W, 3)``."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))[None]
    except (OSError, ValueError) as err:
        raise UserError(f"data.stain_target: cannot read image {path} ({err})") from None


def build_stain_norm(
    cfg: RunConfig, plugins: PluginSet, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function mapping uint8 ``(B, H, W, 3)`` batches to stain-normalised uint8 batches."""
    if cfg.data.stain_norm is None:
        return lambda images: images
    if cfg.data.stain_target is None:
        raise UserError(
            f"data.stain_target: stain transform '{cfg.data.stain_norm}' needs a target image (--stain-target)"
        )
    transform = plugins["stain"].create(cfg.data.stain_norm, cfg.data.stain_norm_options)
    transform.fit(read_target(cfg.data.stain_target))

    def normalise(images: torch.Tensor) -> torch.Tensor:
        floats = images.permute(0, 3, 1, 2).float().div_(255)
        out = transform(floats).clamp_(0, 1).mul_(255).round_()
        return out.to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    return normalise
