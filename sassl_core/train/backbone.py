"""Building encoders: timm models with pooled output and feature levels.

A backbone is a timm model created with ``num_classes=0`` so that ``forward`` returns pooled
features of size ``num_features``; its ``feature_info`` names the stage modules that the
residual-learning transfer hooks (paper §3.3).
"""

from __future__ import annotations

import torch
from torch import nn

from sassl_core.errors import UserError
from sassl_core.plugins import PluginSet

#: ``timm:<name>`` builds any timm model through the backbone registered as ``TIMM_BACKBONE``.
TIMM_PREFIX = "timm:"
TIMM_BACKBONE = "timm"


def create_backbone(plugins: PluginSet, name: str, options: dict | None, image_size: int) -> nn.Module:
    """A registered backbone by name, or any timm model as ``timm:<name>``, checked to take
    ``image_size`` px inputs."""
    if name.startswith(TIMM_PREFIX):
        options = {**(options or {}), "model": name[len(TIMM_PREFIX) :]}
        model = plugins["backbone"].create(TIMM_BACKBONE, options, image_size=image_size)
    else:
        model = plugins["backbone"].create(name, options, image_size=image_size)
    check_input_size(model, name, image_size)
    return model


def check_input_size(model: nn.Module, name: str, image_size: int) -> None:
    """One tiny forward pass, so a size the backbone cannot take is a clear error up front."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"data.image_size: backbone '{name}' cannot take {image_size} px images ({first})") from None
    finally:
        model.train(was_training)


def pooled_dim(model: nn.Module) -> int:
    """Size of the pooled feature vector ``model`` returns (timm: head_hidden_size or num_features)."""
    size = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if size is None:
        raise UserError(f"backbone {type(model).__name__}: no num_features (a backbone is a timm-style model)")
    return int(size)
