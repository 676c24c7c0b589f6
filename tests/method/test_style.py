"""Style statistics of feature levels: what the discriminator reads with ``sassl.embedding=style``."""

from __future__ import annotations

import timm
import torch

from sassl_core.method.style import StyleTap, style_statistics


def test_statistics_are_channel_means_then_stds_of_every_level():
    a, b = torch.randn(3, 4, 5, 5), torch.randn(3, 2, 1, 1)
    out = style_statistics([a, b])
    assert out.shape == (3, 2 * (4 + 2))
    assert torch.allclose(out[:, :4], a.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(out[:, 6:10], a.std(dim=(2, 3), correction=0), atol=1e-6)
    assert torch.equal(out[:, 10:], torch.zeros(3, 2))  # a 1 x 1 map has no spread (not NaN)


def test_tap_splits_two_encoder_calls_into_the_views_and_keeps_gradients():
    encoder = timm.create_model("resnet18", num_classes=0).eval()  # batch-independent BatchNorm
    x1, x2 = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with StyleTap(encoder, 32) as tap:
        encoder(x1)
        encoder(x2)
        s1, s2 = tap.views(2)
    assert s1.shape == s2.shape == (2, 2 * sum(spec.channels for spec in tap.levels))
    with StyleTap(encoder, 32) as tap:
        encoder(torch.cat([x1, x2]))  # one call for both views gives the same statistics
        t1, t2 = tap.views(2)
    assert torch.allclose(s1, t1, atol=1e-4) and torch.allclose(s2, t2, atol=1e-4)
    s1.sum().backward()
    assert encoder.conv1.weight.grad is not None and encoder.conv1.weight.grad.abs().sum() > 0
    assert not tap.hooks._handles  # hooks removed on exit
