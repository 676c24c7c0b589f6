"""Helpers for the SSL tests: a tiny encoder shaped like a pooled backbone."""

from torch import nn

FEATURE_DIM = 16


def tiny_encoder() -> nn.Module:
    """(B, 3, H, W) -> (B, 16) pooled features, with batch norm like a real backbone."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, FEATURE_DIM, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
