"""Every registered backbone, built at the smallest input size it takes: timm-style pooled
features of ``num_features`` and ``feature_info`` levels, shallow to deep, that the
residual-learning transfer hooks (paper §3.3)."""

from __future__ import annotations

import pytest
import torch

from sassl_core.errors import UserError
from sassl_core.method.features import extract_levels, feature_levels
from sassl_core.train.backbone import create_backbone, pooled_dim
from tests.contract.common import PLUGINS, names

SIZES = (32, 64, 96, 128, 224)  # tried in turn: CNNs pool globally, ViT and Swin are built for the size


def _smallest(name: str) -> tuple[int, torch.nn.Module]:
    refusals = []
    for size in SIZES:
        try:
            return size, create_backbone(PLUGINS, name, {}, size)
        except UserError as err:  # a size the backbone cannot take is refused naming data.image_size
            assert str(err).startswith("data.image_size: "), err
            refusals.append(str(err))
    pytest.fail(f"backbone '{name}' takes none of {SIZES} px: {refusals[-1]}")


@pytest.mark.parametrize("name", names("backbone"))
def test_pooled_features_and_feature_levels(name):
    torch.manual_seed(0)
    size, model = _smallest(name)
    model.eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        pooled = model(x)
        levels = feature_levels(model)
        maps = extract_levels(model, x, levels)
    assert pooled.shape == (2, pooled_dim(model)) and torch.isfinite(pooled).all()
    assert len(levels) >= 2
    reductions = [level.reduction for level in levels]
    assert reductions == sorted(reductions), reductions  # shallow to deep
    for level, feature_map in zip(levels, maps):
        assert feature_map.ndim == 4 and feature_map.shape[:2] == (2, level.channels), level
