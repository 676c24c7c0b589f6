"""Segmentation head: a decoder over the multi-level fused features (paper §3.3; CAMELYON16).

Logits are upsampled to the input size; the loss is Dice + cross-entropy
(``monai.losses.DiceCELoss``); ``predict`` is the argmax class map; metrics are pixel accuracy,
foreground Dice and mean IoU (:func:`sassl_core.metrics.segmentation_metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from pydantic import BaseModel, ConfigDict, Field

import sassl_core
from sassl_core.errors import UserError
from sassl_core.hookspecs import Register, TaskFactory
from sassl_core.interfaces import TargetKind, TaskHead
from sassl_core.metrics import segmentation_metrics
from sassl_plugins.tasks.seg_decoders import DECODERS


class SegmentationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decoder: Literal["unet", "unetpp", "deeplabv3plus"] = "unet"
    decoder_channels: int = Field(64, ge=4)
    low_level_index: int | None = Field(None, ge=0)  # deeplabv3plus only; None = automatic
    dice_weight: float = Field(1.0, ge=0.0)
    ce_weight: float = Field(1.0, ge=0.0)


class SegmentationHead(TaskHead):
    """Logits ``(B, K, H, W)`` at the input size; Dice+CE loss; argmax class map."""

    def __init__(self, options: SegmentationOptions, feature_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        extra = {"low_level_index": options.low_level_index} if options.decoder == "deeplabv3plus" else {}
        self.decoder = DECODERS[options.decoder](list(feature_channels), options.decoder_channels, num_classes, **extra)
        self.criterion = DiceCELoss(
            to_onehot_y=True, softmax=True, lambda_dice=options.dice_weight, lambda_ce=options.ce_weight
        )

    def forward(self, levels: Sequence[torch.Tensor], image_size: int) -> torch.Tensor:
        logits = self.decoder(levels)
        return F.interpolate(logits, size=(image_size, image_size), mode="bilinear", align_corners=False)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(output, target.long().unsqueeze(1))

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output.argmax(dim=1)

    def metrics(self, predictions: np.ndarray, targets: np.ndarray, sources: np.ndarray | None) -> dict:
        return segmentation_metrics(predictions, targets, num_classes=self.num_classes)


def build(options: SegmentationOptions, feature_channels: Sequence[int], num_outputs: int | None) -> SegmentationHead:
    num_classes = num_outputs if num_outputs is not None else 2
    if num_classes < 2:
        raise UserError(f"task 'seg': expected at least 2 mask classes, found {num_classes}")
    if options.low_level_index is not None and options.low_level_index >= len(feature_channels):
        raise UserError(
            f"task.options.low_level_index: expected 0..{len(feature_channels) - 1}, found {options.low_level_index}"
        )
    return SegmentationHead(options, feature_channels, num_classes)


@sassl_core.hookimpl
def sassl_register_tasks(register: Register[TaskFactory]) -> None:
    register("seg", build, SegmentationOptions, target_kind=TargetKind.MASK)
