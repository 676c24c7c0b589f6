"""Fixtures of the SSL tests: a fixed batch of two views."""

import pytest
import torch


@pytest.fixture
def views() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight 32 px images and a second, noisy view of each."""
    gen = torch.Generator().manual_seed(0)
    x1 = torch.rand(8, 3, 32, 32, generator=gen)
    x2 = (x1 + 0.1 * torch.randn(8, 3, 32, 32, generator=gen)).clamp(0, 1)
    return x1, x2
