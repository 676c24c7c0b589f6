"""Segmentation head: a decoder over the multi-level fused features (paper §3.3; CAMELYON16).

Logits are upsampled to the input size; the loss is Dice (``monai.losses.MaskedDiceLoss``) +
cross-entropy; ``predict`` is the argmax class map; metrics are foreground Dice, mean IoU and
pixel accuracy (:func:`sassl_core.metrics.segmentation_metrics`). Mask pixels equal to
``ignore_index`` (255 by default: unannotated) count in neither the loss nor the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from pydantic import BaseModel, ConfigDict, Field

import sassl_core
from sassl_core.errors import UserError
from sassl_core.hookspecs import Register, TaskFactory
from sassl_core.interfaces import TargetKind, TaskHead
from sassl_core.metrics import segmentation_metrics, segmentation_scores
from sassl_plugins.tasks.seg_decoders import DECODERS


class SegmentationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decoder: Literal["unet", "unetpp", "deeplabv3plus"] = "unet"
    decoder_channels: int = Field(64, ge=4)
    low_level_index: int | None = Field(None, ge=0)  # deeplabv3plus only; None = automatic
    dice_weight: float = Field(1.0, ge=0.0)
    ce_weight: float = Field(1.0, ge=0.0)
    ignore_index: int = Field(255, ge=0)  # mask value of pixels that count nowhere


class SegmentationHead(TaskHead):
    """Logits ``(B, K, H, W)`` at the input size; Dice+CE loss; argmax class map."""

    headline = "dice"

    def __init__(self, options: SegmentationOptions, feature_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = options.ignore_index
        self.dice_weight, self.ce_weight = options.dice_weight, options.ce_weight
        extra = {"low_level_index": options.low_level_index} if options.decoder == "deeplabv3plus" else {}
        self.decoder = DECODERS[options.decoder](list(feature_channels), options.decoder_channels, num_classes, **extra)
        self.dice = MaskedDiceLoss(to_onehot_y=True, softmax=True)

    def forward(self, levels: Sequence[torch.Tensor], image_size: int) -> torch.Tensor:
        logits = self.decoder(levels)
        return F.interpolate(logits, size=(image_size, image_size), mode="bilinear", align_corners=False)

    def check_targets(self, target: torch.Tensor | np.ndarray) -> None:
        """Refuse mask values that are neither a class nor the ignore value."""
        target = torch.as_tensor(target)
        bad = ((target < 0) | (target >= self.num_classes)) & (target != self.ignore_index)
        if bad.any():
            raise UserError(
                f"mask: expected class values 0..{self.num_classes - 1} or the ignore value {self.ignore_index} "
                f"(task.options.ignore_index), found {int(target[bad][0])}"
            )

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Dice over the annotated pixels + cross-entropy ignoring ``ignore_index``."""
        self.check_targets(target)
        target = target.long()
        keep = target != self.ignore_index
        if not keep.any():  # nothing annotated in this batch: no signal, keep the graph
            return output.sum() * 0.0
        classes = torch.where(keep, target, torch.zeros_like(target)).unsqueeze(1)
        dice = self.dice(output, classes, mask=keep.unsqueeze(1))
        ce = F.cross_entropy(output, target, ignore_index=self.ignore_index)
        return self.dice_weight * dice + self.ce_weight * ce

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output.argmax(dim=1)

    def metrics(self, predictions: np.ndarray, targets: np.ndarray, sources: np.ndarray | None) -> dict:
        self.check_targets(targets)
        return segmentation_metrics(predictions, targets, self.num_classes, self.ignore_index)

    def headline_score(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        """The headline metric alone (validation, bootstrap intervals)."""
        return float(self.patch_scores(predictions, targets)[0].mean())

    def patch_scores(self, predictions: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dice and IoU of each patch ``(N,)``, ``(N,)`` (``predictions.csv``)."""
        dice, iou, _ = segmentation_scores(predictions, targets, self.num_classes, self.ignore_index)
        return dice, iou


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
