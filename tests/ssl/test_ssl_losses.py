"""Loss values against hand-computed ones and their known properties."""

import math

import pytest
import torch
import torch.nn.functional as F

from sassl_core.ssl.losses import byol_regression_loss, info_nce, negative_cosine_similarity, nt_xent


def test_negative_cosine_of_identical_vectors_is_minus_one():
    p = torch.randn(5, 7)
    assert negative_cosine_similarity(p, 3 * p).item() == pytest.approx(-1.0)


def test_negative_cosine_of_orthogonal_vectors_is_zero():
    assert negative_cosine_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 5.0]])).item() == 0.0


def test_byol_loss_is_mse_of_normalised_vectors():
    p, z = torch.randn(6, 4), torch.randn(6, 4)
    expected = ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(dim=1).mean()
    assert byol_regression_loss(p, z).item() == pytest.approx(expected.item(), rel=1e-5)


def test_info_nce_matches_hand_computed_value():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.0, -2.0]])
    t = 0.5
    cos = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0) + math.exp(-1 / t) + math.exp(0)))
    row1 = -math.log(math.exp(cos / t) / (math.exp(cos / t) + math.exp(1 / t) + math.exp(0) + math.exp(-1 / t)))
    assert info_nce(q, k, queue, temperature=t).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_info_nce_is_lower_when_negatives_are_dissimilar():
    q = torch.randn(4, 8)
    far = -F.normalize(q, dim=1)
    assert info_nce(q, q, far).item() < info_nce(q, q, q).item()


def test_nt_xent_of_identical_orthonormal_views_equals_analytic_value():
    batch, t = 5, 0.3
    z = torch.eye(8)[:batch] * 4.0  # normalised inside
    # each of the 2B views: positive logit 1/t, 2B - 2 negatives at cosine 0
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * batch - 2))
    assert nt_xent(z, z, temperature=t).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_matches_a_direct_implementation():
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    t = 0.2
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = torch.exp(z @ z.T / t)
    total = 0.0
    for i in range(12):
        partner = (i + 6) % 12
        total += -torch.log(sim[i, partner] / (sim[i].sum() - sim[i, i]))
    assert nt_xent(z1, z2, t).item() == pytest.approx(total.item() / 12, rel=1e-5)
