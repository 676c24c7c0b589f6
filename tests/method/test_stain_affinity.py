"""Relation matrix, affinity matrix, masked means and the discriminator's shape (paper §3.2)."""

import pytest
import torch
from torch import nn

from sassl_core.method.affinity import affinity_matrix, masked_means, relation_matrix
from sassl_core.method.discriminator import StainDiscriminator


def test_relation_matrix_marks_same_source_pairs():
    r = relation_matrix(torch.tensor([2, 0, 2, 1]))
    expected = torch.tensor(
        [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]],
        dtype=torch.float32,
    )
    assert torch.equal(r, expected)


def test_relation_matrix_of_one_source_is_all_ones_and_of_distinct_sources_identity():
    assert torch.equal(relation_matrix(torch.tensor([4, 4, 4])), torch.ones(3, 3))
    assert torch.equal(relation_matrix(torch.arange(3)), torch.eye(3))


def test_affinity_is_sigmoid_of_scaled_products_or_raw():
    l1, l2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0], [0.5, 0.5]])
    raw = torch.tensor([[1.0, 1.5]])
    torch.testing.assert_close(affinity_matrix(l1, l2, temperature=2.0, squash=False), raw / 2)
    torch.testing.assert_close(affinity_matrix(l1, l2, temperature=2.0), torch.sigmoid(raw / 2))


def test_cosine_affinity_cannot_saturate_and_ignores_scale():
    gen = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    huge = affinity_matrix(1e4 * l1, 1e4 * l2, temperature=0.5, cosine=True)
    torch.testing.assert_close(huge, affinity_matrix(l1, l2, temperature=0.5, cosine=True))
    bound = torch.sigmoid(torch.tensor(2.0))  # |cos| <= 1, temperature 0.5
    assert (huge <= bound + 1e-6).all() and (huge >= 1 - bound - 1e-6).all()
    assert affinity_matrix(1e4 * l1, 1e4 * l2).max() > 0.999  # the plain product saturates
    aligned = affinity_matrix(l1, l1, temperature=0.5, cosine=True).diagonal()
    torch.testing.assert_close(aligned, torch.full((5,), float(bound)))


def test_masked_means_by_hand():
    a = torch.tensor([[0.9, 0.1, 0.5], [0.3, 0.8, 0.2], [0.6, 0.4, 0.7]])
    r = relation_matrix(torch.tensor([0, 0, 1]))
    a_same, a_diff = masked_means(a, r)
    assert a_same.item() == pytest.approx((0.9 + 0.1 + 0.3 + 0.8 + 0.7) / 5)
    assert a_diff.item() == pytest.approx((0.5 + 0.2 + 0.6 + 0.4) / 4)


def test_masked_means_use_magnitudes_of_raw_affinities():
    a = torch.tensor([[-2.0, 1.0], [3.0, 4.0]])
    a_same, a_diff = masked_means(a, relation_matrix(torch.tensor([0, 1])))
    assert (a_same.item(), a_diff.item()) == (3.0, 2.0)


def test_masked_means_when_every_patch_shares_one_source():
    a = torch.rand(4, 4, requires_grad=True)
    a_same, a_diff = masked_means(a, relation_matrix(torch.zeros(4, dtype=torch.long)))
    assert a_same.item() == pytest.approx(a.mean().item())
    assert a_diff.item() == 0.0
    (a_same + a_diff).backward()
    assert torch.isfinite(a.grad).all()


def test_masked_means_when_no_two_patches_share_a_source():
    a = torch.rand(4, 4)
    a_same, a_diff = masked_means(a, relation_matrix(torch.arange(4)))
    assert a_same.item() == pytest.approx(a.diagonal().mean().item())
    assert a_diff.item() == pytest.approx(((a.sum() - a.diagonal().sum()) / 12).item())


def test_discriminator_is_leaky_relu_stack_plus_shortcut():
    torch.manual_seed(0)
    d = StainDiscriminator(in_dim=6, hidden_dim=10, layers=3, negative_slope=0.2)
    linears = [m for m in d.body if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and all(isinstance(m, nn.LeakyReLU) for m in d.body[1::2])
    s = torch.randn(5, 6)
    torch.testing.assert_close(d(s), d.body(s) + d.shortcut(s))
    with torch.no_grad():  # silence the stack: only the shortcut is left
        linears[-1].weight.zero_()
        linears[-1].bias.zero_()
    torch.testing.assert_close(d(s), d.shortcut(s))


def test_discriminator_shortcut_is_identity_when_widths_match():
    d = StainDiscriminator(in_dim=8, hidden_dim=8, layers=2)
    assert isinstance(d.shortcut, nn.Identity)
