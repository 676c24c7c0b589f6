"""Every registered SSL method (paper §3.1): two views in, a float32 scalar loss and per-view
embeddings ``s1, s2`` out, and gradients that reach the encoder — through the loss, and
through ``s1, s2`` for the stain discriminator (paper §3.2)."""

from __future__ import annotations

import pytest
import torch

from sassl_core.interfaces import SSLMethod, SSLOutput
from tests.contract.common import PLUGINS, names
from tests.fixtures.encoders import FEATURE_DIM, tiny_encoder


def _encoder_grads(encoder: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in encoder.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


@pytest.mark.parametrize("name", names("ssl"))
def test_forward_and_backward_reach_the_encoder(name):
    torch.manual_seed(0)
    encoder = tiny_encoder()
    method = PLUGINS["ssl"].create(name, {}, encoder=encoder, feature_dim=FEATURE_DIM)
    assert isinstance(method, SSLMethod) and method.encoder is encoder
    x1, x2 = torch.rand(2, 4, 3, 32, 32)
    out = method(x1, x2)
    assert isinstance(out, SSLOutput)
    assert out.loss.ndim == 0 and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.s1.ndim == 2 and out.s1.shape[0] == 4 and out.s1.shape == out.s2.shape
    # the discriminator's gradient reaches the encoder through the undetached embeddings
    torch.autograd.backward(out.s1.sum() + out.s2.sum(), retain_graph=True)
    assert _encoder_grads(encoder), "s1, s2 carry no gradient to the encoder"
    method.zero_grad()
    out.loss.backward()
    assert _encoder_grads(encoder), "the loss carries no gradient to the encoder"
    # the encoder's own features of the two views, when given (sassl.embedding=encoder)
    for h, x in ((out.h1, x1), (out.h2, x2)):
        if h is not None:
            assert h.shape == (4, FEATURE_DIM) and torch.equal(h, encoder(x))
    method.after_step(1.0)  # the trainer's hook after every optimiser step


@pytest.mark.parametrize("name", names("ssl"))
def test_loss_is_float32_under_bf16_autocast(name):
    """On a GPU the trainer autocasts to bf16 by default: every method's loss must still be a
    float32 scalar that backpropagates (NT-Xent once raised there; cosines lost precision)."""
    torch.manual_seed(0)
    encoder = tiny_encoder()
    method = PLUGINS["ssl"].create(name, {}, encoder=encoder, feature_dim=FEATURE_DIM)
    x1, x2 = torch.rand(2, 4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(x1, x2)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert _encoder_grads(encoder)
