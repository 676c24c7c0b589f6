"""Building encoders: timm models with pooled output and feature levels.

A backbone is a timm model created with ``num_classes=0`` so that ``forward`` returns pooled
features of size ``num_features``; its ``feature_info`` names the stage modules that the
residual-learning transfer hooks (paper §3.3).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from sassl_core.errors import UserError
from sassl_core.plugins import PluginSet

TIMM_PREFIX = "timm:"


class TimmOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pretrained: bool = False  # download ImageNet weights through timm (needs network)
    weights: Path | None = None  # local weights file (safetensors or torch state dict)
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False  # recompute activations in backward: less memory (e.g. 512 px), more time


def build_timm(timm_name: str, options: TimmOptions, image_size: int) -> nn.Module:
    """``timm.create_model(timm_name, num_classes=0)``, sized for ``image_size`` when needed."""
    kwargs: dict = {"num_classes": 0}
    if options.drop_path_rate:
        kwargs["drop_path_rate"] = options.drop_path_rate
    if timm_name.startswith(("vit", "swin", "deit", "beit", "eva")):
        kwargs["img_size"] = image_size
    try:
        model = timm.create_model(timm_name, pretrained=options.pretrained, **kwargs)
    except RuntimeError as err:
        raise UserError(f"backbone '{timm_name}': {str(err).splitlines()[0]}") from None
    if options.weights is not None:
        load_weights(model, options.weights, timm_name)
    if options.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def load_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load a local weights file (safetensors, or a torch file read with weights_only=True)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: backbone weights file not found")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(f"{path}: not a loadable weights file ({type(err).__name__})") from None
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.", "classifier."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(model.state_dict()):
        raise UserError(f"{path}: weights do not fit backbone '{name}' ({len(unexpected)} unexpected keys)")


def create_backbone(plugins: PluginSet, name: str, options: dict | None, image_size: int) -> nn.Module:
    """A registered backbone by name, or any timm model as ``timm:<name>``, checked to take
    ``image_size`` px inputs."""
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX):]
        if timm_name not in timm.list_models():
            raise UserError(f"unknown timm model '{timm_name}' (see timm.list_models())")
        model = build_timm(timm_name, TimmOptions.model_validate(options or {}), image_size)
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
    return int(getattr(model, "head_hidden_size", None) or model.num_features)
