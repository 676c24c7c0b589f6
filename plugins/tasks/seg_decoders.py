"""Decoders from multi-level fused features to a class map (paper §3.3, Fig. 4; Table 6).

Each decoder takes the fused levels ``f_e^l`` (shallow to deep, each ``(B, C_l, H_l, W_l)``)
and returns logits ``(B, K, H_0', W_0')`` at the resolution of its finest feature; the
segmentation head upsamples them to the input size. Levels are matched by their spatial size
(bilinear resizing), so strides need not be powers of two apart (ViT levels share one stride).

* :class:`UNetDecoder` — U-Net: deepest level upsampled and concatenated with each skip.
* :class:`UNetPlusPlusDecoder` — UNet++ (Zhou et al. 2018): nested dense skip nodes
  ``X^{i,j} = conv([X^{i,0..j-1}, up(X^{i+1,j-1})])``, output ``X^{0,L-1}``.
* :class:`DeepLabV3PlusDecoder` — DeepLabV3+ (Chen et al. 2018): atrous spatial pyramid
  pooling on the deepest level, fused with one low-level (fine) level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, SimpleASPP
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> Convolution:
    return Convolution(2, in_channels, out_channels, kernel_size=kernel_size, act="RELU", norm="BATCH", bias=False)


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``like``'s spatial size (no-op when equal)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class UNetDecoder(nn.Module):
    def __init__(self, feature_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        deep = [feature_channels[-1]] + [channels] * (len(feature_channels) - 1)
        self.blocks = nn.ModuleList(
            double_conv(deep[k] + skip, channels) for k, skip in enumerate(reversed(feature_channels[:-1]))
        )
        self.classifier = nn.Conv2d(channels if len(feature_channels) > 1 else feature_channels[0], num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        x = levels[-1]
        for block, skip in zip(self.blocks, reversed(levels[:-1])):
            x = block(torch.cat([resize_to(x, skip), skip], dim=1))
        return self.classifier(x)


class UNetPlusPlusDecoder(nn.Module):
    def __init__(self, feature_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        n = len(feature_channels)
        self.project = nn.ModuleList(conv_bn_relu(c, channels, kernel_size=1) for c in feature_channels)
        # node (i, j) for j >= 1 sees j same-level nodes and one upsampled deeper node
        self.nodes = nn.ModuleDict(
            {f"{i}_{j}": double_conv(channels * (j + 1), channels) for j in range(1, n) for i in range(n - j)}
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        n = len(levels)
        grid = [[project(level)] for project, level in zip(self.project, levels)]
        for j in range(1, n):
            for i in range(n - j):
                deeper = resize_to(grid[i + 1][j - 1], grid[i][0])
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat([*grid[i], deeper], dim=1)))
        return self.classifier(grid[0][-1])


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP (monai ``SimpleASPP``, dilations 1/2/4/6) on the deepest level + low-level fusion.

    ``low_level_index`` picks the fine level; ``None`` takes level 1 when there are five or
    more levels (timm CNNs, whose level 0 is the stride-2 stem) and level 0 otherwise.
    """

    def __init__(
        self, feature_channels: Sequence[int], channels: int, num_classes: int, low_level_index: int | None = None
    ) -> None:
        super().__init__()
        n = len(feature_channels)
        self.low_level_index = low_level_index if low_level_index is not None else (1 if n >= 5 else 0)
        if not 0 <= self.low_level_index < n:
            raise ValueError(f"low_level_index: expected 0..{n - 1}, found {self.low_level_index}")
        branch = max(channels // 4, 1)
        self.aspp = nn.Sequential(
            SimpleASPP(2, feature_channels[-1], branch, norm_type="BATCH", acti_type="RELU"),
            conv_bn_relu(branch * 4, channels, kernel_size=1),
        )
        low_channels = max(channels // 2, 1)
        self.low = conv_bn_relu(feature_channels[self.low_level_index], low_channels, kernel_size=1)
        self.fuse = double_conv(channels + low_channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        low = self.low(levels[self.low_level_index])
        context = resize_to(self.aspp(levels[-1]), low)
        return self.classifier(self.fuse(torch.cat([context, low], dim=1)))


DECODERS = {"unet": UNetDecoder, "unetpp": UNetPlusPlusDecoder, "deeplabv3plus": DeepLabV3PlusDecoder}
