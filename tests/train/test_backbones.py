"""Every registered backbone works in pretraining (an SSL step) and in the residual-learning
transfer (all feature levels), at a small input size."""

import pytest
import torch

from sassl_core.method.transfer import build_dual_encoder
from sassl_core.plugins import load_plugins
from sassl_core.train.backbone import create_backbone, pooled_dim

PLUGINS = load_plugins()
# Backbones whose stem or fixed-size stages need more than 64 px (the paper feeds 224/512).
SIZE = {"nasnet": 96}
HEAVY = {"nasnet", "resnet50", "efficientnet_b1", "repvgg_b0", "swin_tiny", "vit_small"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in PLUGINS["backbone"].names()]
)
def test_backbone_in_pretraining_and_transfer(name):
    size = SIZE.get(name, 64)
    torch.manual_seed(0)
    encoder = create_backbone(PLUGINS, name, {}, size)
    ssl = PLUGINS["ssl"].create(
        "simsiam",
        {"proj_dim": 16, "proj_hidden_dim": 32, "pred_hidden_dim": 8},
        encoder=encoder,
        feature_dim=pooled_dim(encoder),
    )
    x1, x2 = torch.rand(2, 2, 3, size, size)
    out = ssl(x1, x2)
    out.loss.backward()
    assert out.s1.shape == (2, 16) and torch.isfinite(out.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())

    dual = build_dual_encoder(lambda: create_backbone(PLUGINS, name, {}, size), encoder.state_dict())
    levels = dual(torch.rand(2, 3, size, size))
    assert len(levels) == len(dual.feature_channels) >= 2
    for level, channels in zip(levels, dual.feature_channels):
        assert level.ndim == 4 and level.shape[:2] == (2, channels)
    sum(level.mean() for level in levels).backward()
    assert all(p.grad is None for p in dual.generic.parameters())
    assert any(p.grad is not None for p in dual.special.parameters())
