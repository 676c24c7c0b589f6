"""The paper's backbones (Tables 2-7), built by timm.

Every name below is a timm model name; the backbone ``timm`` builds any other timm model by
name (``--backbone timm:<name>``). ProxylessNAS is not in timm; its nearest
relative there is ``spnasnet_100`` (Single-Path NAS: the same MobileNetV2 inverted-residual
search space and hardware-aware one-shot search), registered as ``proxylessnas``.

Input size is not fixed: CNNs pool globally and take any size their strides allow (NASNet's
stem needs about 96 px or more); ViT and Swin fix their patch grid at construction, so they
are built for the run's ``data.image_size`` (timm resamples position embeddings and Swin's
windows to it, also for pretrained weights). A size a backbone cannot take is refused up front
with an error naming ``data.image_size``.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

import sassl_core
from sassl_core.errors import UserError

PAPER_BACKBONES = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_b1": "efficientnet_b1",
    "repvgg_a0": "repvgg_a0",
    "repvgg_b0": "repvgg_b0",
    "vit_small": "vit_small_patch16_224",
    "vit_tiny": "vit_tiny_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "nasnet": "nasnetalarge",
    "proxylessnas": "spnasnet_100",
}


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
        enable = getattr(model, "set_grad_checkpointing", None)  # timm models have it; nn.Module does not
        if enable is None:
            raise UserError(f"backbone '{timm_name}': timm has no gradient checkpointing for it")
        enable(True)
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


class TimmModelOptions(TimmOptions):
    """Options of the ``timm`` backbone, which builds any timm model by name (``--backbone timm:<name>``)."""

    model: str = "resnet18"


def build_any(options: TimmModelOptions, image_size: int) -> nn.Module:
    if options.model not in timm.list_models():
        raise UserError(f"unknown timm model '{options.model}' (see timm.list_models())")
    return build_timm(options.model, options, image_size)


def _factory(timm_name: str):
    def build(options: TimmOptions, image_size: int):
        return build_timm(timm_name, options, image_size)

    return build


@sassl_core.hookimpl
def sassl_register_backbones(register):
    for name, timm_name in PAPER_BACKBONES.items():
        register(name, _factory(timm_name), TimmOptions)
    register("timm", build_any, TimmModelOptions)
